"""``gridrun compare``: base model vs a trial's adapter, completions side by side on the evaluation prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridrun import storage as store
from gridrun.errors import GridrunError
from gridrun.experiment import ExperimentMeta
from gridrun.export import checkpoint_dir, pick_trial
from gridrun.report import load_summary

__all__ = ["compare", "format_comparison"]


def compare(experiment_dir: str | Path, trial: str | None = None, n: int = 8) -> list[dict[str, Any]]:
    """``[{prompt, reference, base, adapter, base_score, adapter_score}]`` for the first ``n`` evaluation prompts
    of the experiment (each completion scored alone by the experiment's evaluators)."""
    if n < 1:  # before anything loads: a mistyped argument costs no model load
        raise GridrunError(f"-n: must be at least 1, got {n}")
    from trainables.model import load_base, pick_device, quiet_hf

    quiet_hf()  # before peft imports bitsandbytes, which warns about optional CPU kernels on import
    from peft import PeftModel

    from evaluators import GenerationSettings, build_evaluator, build_generator
    from trainables.base_scores import example_scores
    from trainables.data import load_task_data, render_prompt
    from trainables.precision import autocast

    store.check_storage(str(experiment_dir), "experiment folder")
    exp = store.location(experiment_dir)
    meta = ExperimentMeta.read(exp)
    row = pick_trial(load_summary(exp), trial)
    spec = meta.start_spec().with_params(row["params"])
    base, tok = load_base(spec.model, pick_device(spec.resources.gpu))
    _, rows = load_task_data(spec.data, spec.train.seed)
    rows = rows[:n]
    prompts = [render_prompt(tok, r["prompt"], spec.data.template) for r in rows]
    ev = spec.evaluate
    settings = GenerationSettings(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
    generator = build_generator(spec)  # the experiment's backend (evaluate.backend), as its trials generated
    try:
        with autocast(spec, base):  # the compute dtype the trial's eval rounds generated in
            before = generator.generate(base, tok, prompts, settings)
        with store.local_dir(checkpoint_dir(row)) as ckpt:  # on an object store: downloaded, then removed
            model = PeftModel.from_pretrained(base, str(ckpt / "adapter"))
        with autocast(spec, model):
            after = generator.generate(model, tok, prompts, settings)
    finally:
        generator.close()
    evaluators = [build_evaluator(name, settings, ev.options.get(name)) for name in ev.evaluators]
    examples = [{**r, "prompt": p} for r, p in zip(rows, prompts, strict=True)]
    scored = zip(example_scores(evaluators, before, examples), example_scores(evaluators, after, examples), strict=True)
    return [
        {"prompt": p, "reference": str(r["answer"]), "base": b, "adapter": a, "trial": row["trial_id"]}
        | {"base_score": sb, "adapter_score": sa}
        for p, r, b, a, (sb, sa) in zip(prompts, rows, before, after, scored, strict=True)
    ]


def _score(scores: dict[str, float] | None) -> str:
    return "  [" + ", ".join(f"{k} {v:.3g}" for k, v in scores.items()) + "]" if scores else ""


def format_comparison(pairs: list[dict[str, Any]], width: int = 60) -> str:
    out = []
    for i, p in enumerate(pairs, 1):
        out.append(f"=== {i}/{len(pairs)} " + "=" * 40)
        out.append(p["prompt"].rstrip()[-400:])
        out.append(f"--- reference\n{p['reference']}")
        out.append(f"--- base model{_score(p.get('base_score'))}\n{p['base']}")
        out.append(f"--- adapter (trial {p['trial']}){_score(p.get('adapter_score'))}\n{p['adapter']}")
        out.append("same" if p["base"] == p["adapter"] else "changed")
    return "\n".join(out)
