"""The one setup and the one optimizer builder of the detection trainer and the pretraining
tools (issue 12): the same device check, one BETAS key, open_clip's parameter groups."""

import pytest
import torch
from torch import nn

from ovdet_plugin.config import get_ovdet_cfg
from ovdet_plugin.engine import build_ovdet_optimizer, setup_ovdet_cfg
from ovdet_plugin.engine.optimizer import clip_param_groups
from ovdet_plugin.engine.pretrain import argument_parser


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_pretraining_setup_refuses_cuda_without_gpu(tmp_path):
    """The pretraining tools used to fall back to the CPU silently; they now refuse, like
    tools/train_net.py, with a message that names the fix."""
    args = argument_parser("t").parse_args(
        ["--config-file", "configs/test/tiny_rovit_pretrain.yaml", "MODEL.DEVICE", "cuda"]
        + ["OUTPUT_DIR", str(tmp_path)]
    )
    with pytest.raises(ValueError, match="no usable CUDA GPU.*Set MODEL.DEVICE cpu"):
        setup_ovdet_cfg(args)


def test_old_pretrain_betas_key_names_the_new_one(tmp_path):
    yaml = tmp_path / "old.yaml"
    yaml.write_text("MODEL:\n  OVD:\n    PRETRAIN:\n      BETAS: (0.9, 0.98)\n")
    with pytest.raises(KeyError, match="MODEL.OVD.SOLVER.BETAS"):
        get_ovdet_cfg(str(yaml))


class _TinyClip(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.ln = nn.LayerNorm(3)
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_pretraining_adamw_groups_and_betas():
    """What the pretraining loop builds: AdamW with MODEL.OVD.SOLVER.BETAS over two groups,
    matrices decayed, gains/biases/logit_scale not, frozen parameters left out."""
    cfg = get_ovdet_cfg(
        "configs/test/tiny_rovit_pretrain.yaml", ["MODEL.OVD.SOLVER.BETAS", "(0.8, 0.9)"]
    )
    model = _TinyClip()
    opt = build_ovdet_optimizer(
        cfg, model, optimizer="AdamW", param_groups=clip_param_groups(cfg, model)
    )
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [model.proj.weight.shape]
    assert decay["weight_decay"] == cfg.SOLVER.WEIGHT_DECAY and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 4  # proj bias, ln weight + bias, logit_scale
    assert decay["betas"] == (0.8, 0.9) and decay["lr"] == cfg.SOLVER.BASE_LR
    with pytest.raises(ValueError, match="No trainable parameter"):
        clip_param_groups(cfg, nn.Linear(2, 2).requires_grad_(False))


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_fused_optimizer_takes_the_same_steps(name):
    """MODEL.OVD.SOLVER.FUSED builds torch's fused kernel; its update matches the default one."""
    cfg = get_ovdet_cfg(
        "configs/test/tiny_rovit_pretrain.yaml", ["MODEL.OVD.SOLVER.OPTIMIZER", name]
    )
    params = {}
    for fused in (False, True):
        cfg.defrost()
        cfg.MODEL.OVD.SOLVER.FUSED = fused
        torch.manual_seed(0)
        model = _TinyClip()
        opt = build_ovdet_optimizer(cfg, model, param_groups=clip_param_groups(cfg, model))
        assert opt.defaults.get("fused") == (True if fused else None)
        for _ in range(3):
            opt.zero_grad()
            model.ln(model.proj(torch.randn(5, 4))).pow(2).sum().backward()
            opt.step()
        params[fused] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(params[False], params[True]):
        torch.testing.assert_close(a, b)


def test_detection_optimizers_built_in_turn_do_not_share_overrides():
    """Detectron2 writes its bias overrides into the dict it is given. The module-level
    temperature overrides were passed as is, so the second optimizer built in one process from a
    config with WEIGHT_DECAY_BIAS raised "Conflicting overrides for 'bias'" (seen in
    benchmarks/gpu_check.py on the ViLD configs), and one built after it without that key
    inherited the first one's bias weight decay."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with_bias_rule = get_ovdet_cfg(
        "configs/test/tiny_fvlm.yaml", ["SOLVER.WEIGHT_DECAY_BIAS", "0.0"]
    )
    plain = get_ovdet_cfg("configs/test/tiny_fvlm.yaml")
    assert plain.SOLVER.WEIGHT_DECAY_BIAS is None and plain.SOLVER.WEIGHT_DECAY > 0

    def bias_decays(cfg):
        opt = build_ovdet_optimizer(cfg, model, optimizer="SGD")
        decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        return {decay[id(m.bias)] for m in model}

    assert bias_decays(with_bias_rule) == {0.0}
    assert bias_decays(with_bias_rule) == {0.0}  # the second build used to raise
    assert bias_decays(plain) == {plain.SOLVER.WEIGHT_DECAY}  # used to inherit 0.0
