"""A generated detection batch for the tests that run whole detectors (LazyConfig, AMP, export)."""

import torch
from detectron2.structures import BitMasks, Boxes, Instances


def detection_batch(height=128, width=160, num_images=1, seed=0, classes=(0, 1)):
    """``num_images`` Detectron2 inputs (CHW float image in 0-255, boxes, classes, bit masks) with
    bright rectangles as objects. ``classes``: the gt class of each of the two boxes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num_images):
        image = torch.rand(3, height, width, generator=g) * 60
        boxes = torch.tensor([[10.0, 12, 60, 80], [70, 20, 150, 110]]) + 4 * i
        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width - 1)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height - 1)
        masks = torch.zeros(len(boxes), height, width, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            image[:, y0:y1, x0:x1] = 220.0 - 100.0 * k
            masks[k, y0:y1, x0:x1] = True
        inst = Instances((height, width), gt_boxes=Boxes(boxes))
        inst.gt_classes = torch.tensor(list(classes))
        inst.gt_masks = BitMasks(masks)
        out.append({"image": image, "instances": inst, "height": height, "width": width})
    return out
