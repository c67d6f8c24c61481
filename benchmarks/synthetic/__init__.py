"""The end-to-end benchmark on the generated dataset (``make demo``, ``make benchmark-synthetic``,
driven by ``tools/run_synthetic_benchmark.py``). It lives outside ``ovdet_plugin`` because it
needs the source tree: it runs ``tools/*.py`` in subprocesses, reads ``configs/synthetic/`` and
the shipped checkpoint under ``benchmarks/checkpoints/``, and records the git commit.

- :mod:`.pipeline`: the steps (data, tiny CLIP, CLIPSelf, the four detectors through
  ``tools/train_net.py``, pictures) and ``results.json`` / ``results.md``;
- :mod:`.ablations`: the ablation table of ``make benchmark-synthetic``.

With ``--from-scratch`` the tiny CLIP is pretrained by the product's own tools
(``tools/generate_synthetic_data.py --pretrain-style scene_crops``, then
``tools/pretrain_rovit.py --config-file configs/pretraining/tiny_synthetic.yaml``);
``benchmarks/ship_tiny_clip.py`` ships such a run as ``benchmarks/checkpoints/``.

The library parts it uses stay in the package: the dataset generator
(:mod:`ovdet_plugin.data.synthetic`) and the zero-shot crop evaluator
(:mod:`ovdet_plugin.evaluation.zero_shot_crops`).
"""
