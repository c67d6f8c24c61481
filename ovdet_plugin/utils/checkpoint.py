"""``AtomicCheckpointer``: Detectron2's ``DetectionCheckpointer`` that never leaves a corrupt or
half-written checkpoint, keeps only the newest periodic checkpoints, and says clearly when a
checkpoint cannot be read or does not fit the model.

Used by ``OVDTrainer`` (``tools/train_net.py``) and by the RO-ViT / CLIPSelf pretraining trainers.
"""

import logging
import os
import re
from typing import List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .atomic_io import atomic_write_path, remove_stale_temporaries

__all__ = ["AtomicCheckpointer", "PERIODIC_CHECKPOINT_RE"]

logger = logging.getLogger(__name__)

# File names of Detectron2's periodic checkpoints ("model_0004999.pth"); "model_final.pth" and
# files named otherwise are never deleted by the keep-last-N policy.
PERIODIC_CHECKPOINT_RE = re.compile(r"^model_(\d{7,})\.pth$")


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with:

    - atomic saves: each checkpoint and ``last_checkpoint`` is written to a temporary file in the
      same folder, fsynced and renamed (``os.replace``), so a kill during a save leaves the
      previous files intact;
    - clean start: the temporary files of an interrupted save are removed when the checkpointer
      of the main process is created;
    - keep-last-N: with ``max_to_keep > 0``, only the newest ``max_to_keep`` periodic
      checkpoints (``model_XXXXXXX.pth``) are kept after each save (``model_final.pth`` always);
    - clear load errors: a truncated or foreign file raises ``RuntimeError`` naming the file and
      the fix; the keys that did not fit the model are kept in :attr:`incompatible`.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        max_to_keep: how many periodic checkpoints to keep (0 = all).
    """

    def __init__(self, model, save_dir: str = "", *, max_to_keep: int = 0, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        if int(max_to_keep) < 0:
            raise ValueError(
                f"max_to_keep must be >= 0 (0 keeps every checkpoint), got {max_to_keep}: set "
                "MODEL.OVD.CHECKPOINT.MAX_TO_KEEP to 0 or a positive number."
            )
        self.max_to_keep = int(max_to_keep)
        self.incompatible = None  # _IncompatibleKeys of the last load, or None
        if self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir):
            remove_stale_temporaries(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        """Write ``save_dir/name.pth`` atomically, tag it in ``last_checkpoint``, then apply the
        keep-last-N policy."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_write_path(save_file) as tmp:
            torch.save(data, tmp)
        self.tag_last_checkpoint(basename)
        self.prune()

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write_path(os.path.join(self.save_dir, "last_checkpoint")) as tmp:
            with open(tmp, "w") as f:
                f.write(last_filename_basename)

    def periodic_checkpoints(self) -> List[str]:
        """The periodic checkpoints in ``save_dir``, oldest first (by iteration)."""
        if not os.path.isdir(self.save_dir):
            return []
        found = []
        for f in os.listdir(self.save_dir):
            m = PERIODIC_CHECKPOINT_RE.match(f)
            if m:
                found.append((int(m.group(1)), os.path.join(self.save_dir, f)))
        return [p for _, p in sorted(found)]

    def prune(self) -> List[str]:
        """Delete all but the newest ``max_to_keep`` periodic checkpoints (never the one that
        ``last_checkpoint`` names). Returns the deleted paths."""
        if self.max_to_keep <= 0:
            return []
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        old = self.periodic_checkpoints()[: -self.max_to_keep]
        deleted = [p for p in old if os.path.abspath(p) != os.path.abspath(last)]
        for path in deleted:
            os.remove(path)
        if deleted:
            self.logger.info(
                "Deleted %d old checkpoint(s), keeping the newest %d (MODEL.OVD.CHECKPOINT."
                "MAX_TO_KEEP): %s",
                len(deleted),
                self.max_to_keep,
                ", ".join(os.path.basename(p) for p in deleted),
            )
        return deleted

    def load(self, path: str, *args, **kwargs):
        try:
            return super().load(path, *args, **kwargs)
        except (
            AssertionError
        ) as e:  # fvcore: assert os.path.isfile(path), "Checkpoint ... not found!"
            if "not found" not in str(e):
                raise
            raise FileNotFoundError(
                f"Checkpoint {path!r} not found. Pass an existing file (or a detectron2:// or "
                "https:// URL) as MODEL.WEIGHTS; for --resume, OUTPUT_DIR/last_checkpoint names a "
                "file that was deleted: delete last_checkpoint or restore the file."
            ) from e

    def _load_file(self, f: str):
        try:
            return super()._load_file(f)
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated zip, pickle garbage, wrong format, ...
            raise RuntimeError(
                f"Cannot read the checkpoint {f!r} ({type(e).__name__}: {e}). The file is "
                "truncated or is not a PyTorch/Detectron2 checkpoint. Pass a complete checkpoint "
                "(e.g. the run's model_final.pth, or an earlier model_XXXXXXX.pth) as "
                "MODEL.WEIGHTS, or re-download it."
            ) from e

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def require_complete_load(self, path: str, what: str = "MODEL.WEIGHTS") -> None:
        """Raise ``ValueError`` when the last load left model weights missing or of the wrong
        shape (a checkpoint of another model: evaluating it would evaluate random layers).

        Args:
            path: the file that was loaded (named in the message).
            what: the option that named it.
        """
        inc: Optional[object] = self.incompatible
        if inc is None:
            raise ValueError(
                f"{what} {path!r} holds no model weights (an empty MODEL.WEIGHTS, or a file "
                "without a 'model' entry): pass the checkpoint your training run wrote, e.g. "
                "OUTPUT_DIR/model_final.pth."
            )
        missing = list(inc.missing_keys)
        shapes = [k for k, *_ in inc.incorrect_shapes]
        if missing or shapes:
            raise ValueError(
                f"{what} {path!r} does not fit the model built from this config: "
                f"{len(missing)} weight(s) missing (e.g. {missing[:4]}), {len(shapes)} of another "
                f"shape (e.g. {shapes[:4]}). Pass a checkpoint trained with this config (same "
                "--config-file and overrides), or the config the checkpoint was trained with."
            )
