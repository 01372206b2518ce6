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
    """``[{prompt, reference, base, adapter}]`` for the first ``n`` evaluation prompts of the experiment."""
    from trainables.model import load_base, pick_device, quiet_hf

    quiet_hf()  # before peft imports bitsandbytes, which warns about optional CPU kernels on import
    from peft import PeftModel

    from evaluators import GenerationSettings, generate
    from trainables.data import load_task_data, render_prompt

    if n < 1:
        raise GridrunError(f"-n: must be at least 1, got {n}")
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
    before = generate(base, tok, prompts, settings)
    with store.local_dir(checkpoint_dir(row)) as ckpt:  # on an object store: downloaded, then removed
        model = PeftModel.from_pretrained(base, str(ckpt / "adapter"))
    after = generate(model, tok, prompts, settings)
    return [
        {"prompt": p, "reference": str(r["answer"]), "base": b, "adapter": a, "trial": row["trial_id"]}
        for p, r, b, a in zip(prompts, rows, before, after, strict=True)
    ]


def format_comparison(pairs: list[dict[str, Any]], width: int = 60) -> str:
    out = []
    for i, p in enumerate(pairs, 1):
        out.append(f"=== {i}/{len(pairs)} " + "=" * 40)
        out.append(p["prompt"].rstrip()[-400:])
        out.append(f"--- reference\n{p['reference']}")
        out.append(f"--- base model\n{p['base']}")
        out.append(f"--- adapter (trial {p['trial']})\n{p['adapter']}")
        out.append("same" if p["base"] == p["adapter"] else "changed")
    return "\n".join(out)
