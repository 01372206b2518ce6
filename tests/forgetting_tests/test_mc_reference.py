"""The forgetting benchmarks' accuracy is lm-evaluation-harness's, checked against lm-evaluation-harness itself.

For HellaSwag, ARC-Challenge and WinoGrande, a few hundred items in the hub schema (``tests/standins.py``) are
read by gridrun (``load_mc_sets``) and scored by ``mc_accuracy`` on the tiny model; the same folder is read by
lm-eval's own task definitions (its YAML, ``process_docs`` and ``doc_to_*`` functions, only the dataset's
location changed) and scored by its ``HFLM`` around the same model and tokenizer objects. The accuracies must be
equal, and item by item: the same requests (context and continuation strings), the same log-likelihoods, the
same right and wrong answers. lm-eval is a dev extra; without it these tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forgetting.data import BENCHMARKS, load_mc_sets
from forgetting.mc import loglikelihoods, mc_accuracy
from gridrun.spec import McSpec
from tests import standins

ITEMS = 300
#: benchmark → (hub id of its stand-in, subset), as lm-eval's task YAML names them
HUB = {
    "hellaswag": ("Rowan/hellaswag", None),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"),
    "winogrande": ("allenai/winogrande", "winogrande_xl"),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_path: Path) -> Iterator[tuple[Any, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    # one thread: on a shared 2-core machine two threads spin on each other (measured 13-30x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model, tok
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def harness(model_and_tokenizer: tuple[Any, Any]) -> tuple[Any, Any]:
    """lm-eval's task manager (its hellaswag, arc and winogrande folders only: indexing every task takes ~10 s)
    and its HFLM around the model and tokenizer gridrun scores."""
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval (dev extra, pip install 'lm-eval==0.4.13') is the oracle for multiple-choice scoring")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.origin is not None
    tasks = Path(spec.origin).parent / "tasks"
    manager = TaskManager(include_path=[tasks / d for d in ("hellaswag", "arc", "winogrande")], include_defaults=False)
    model, tok = model_and_tokenizer
    return manager, HFLM(pretrained=model, tokenizer=tok, batch_size=32)


def _lm_eval_samples(harness: tuple[Any, Any], bench: str, folder: Path, subset: str | None) -> tuple[float, list]:
    """lm-eval's accuracy (the metric gridrun reports for ``bench``) and its per-item samples, in item order."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks._yaml_loader import load_yaml

    manager, lm = harness
    config = load_yaml(manager.task_index[bench].yaml_path, resolve_func=True)  # arc_challenge: its include, too
    # the one change: read the stand-in folder; a subset of a folder is its sub-folder, as gridrun reads it
    config.update(dataset_path=str(folder), dataset_name=None, dataset_kwargs={"data_dir": subset} if subset else None)
    out = simple_evaluate(model=lm, tasks=[config], limit=ITEMS, log_samples=True, task_manager=manager)
    metric = BENCHMARKS[bench].metric
    return out["results"][bench][f"{metric},none"], sorted(out["samples"][bench], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("bench", sorted(HUB))
def test_accuracy_equals_lm_evaluation_harness_item_by_item(
    bench: str, hub: Path, model_and_tokenizer: tuple[Any, Any], harness: tuple[Any, Any]
) -> None:
    model, tok = model_and_tokenizer
    hub_id, subset = HUB[bench]
    folder = standins.standin(hub_id, hub)
    (mc_set,) = load_mc_sets([McSpec(benchmark=bench, source=str(folder), subset=subset, limit=ITEMS)])
    ours = mc_accuracy(model, tok, mc_set.items, mc_set.metric)
    theirs, samples = _lm_eval_samples(harness, bench, folder, subset)

    assert len(mc_set.items) == len(samples) == ITEMS
    # the same requests: lm-eval's prompt, choices, delimiter and clean-up, string for string
    for item, sample in zip(mc_set.items, samples, strict=True):
        pairs = list(zip(item["contexts"], item["continuations"], strict=True))
        assert pairs == [tuple(a) for a in sample["arguments"]]
    # the same log-likelihoods (the requests are batched differently: float32 rounding apart)
    requests = [(c, x) for it in mc_set.items for c, x in zip(it["contexts"], it["continuations"], strict=True)]
    ours_ll = loglikelihoods(model, tok, requests)
    theirs_ll = [ll for s in samples for ll, _greedy in s["filtered_resps"]]
    gap = max(abs(a - b) for a, b in zip(ours_ll, theirs_ll, strict=True))
    assert gap < 1e-4
    # the same verdict on every item, and the same accuracy, exactly
    per_item = [mc_accuracy(model, tok, [it], mc_set.metric) for it in mc_set.items]
    assert per_item == [s[mc_set.metric] for s in samples]
    assert ours == theirs == sum(per_item) / ITEMS
    print(
        f"\n{bench}: {ITEMS} items, {mc_set.metric} gridrun {ours:.4f} = lm-eval {theirs:.4f}, "
        f"{ITEMS} of {ITEMS} verdicts equal, max |log-likelihood difference| {gap:.1e}"
    )


def test_a_local_snapshot_of_a_benchmark_repo_reads_the_benchmarks_own_subset(hub: Path) -> None:
    """A snapshot of allenai/ai2_arc (ARC-Challenge/ and ARC-Easy/ sub-folders) given as the source reads the
    benchmark's own subset, not both merged."""
    folder = standins.standin("allenai/ai2_arc", hub)
    as_written = McSpec(benchmark="arc_easy", source=str(folder), limit=2 * ITEMS)
    with_subset = McSpec(benchmark="arc_easy", source=str(folder), subset="ARC-Easy", limit=2 * ITEMS)
    (read,) = load_mc_sets([as_written])
    (wanted,) = load_mc_sets([with_subset])
    assert len(wanted.items) == ITEMS
    assert read.items == wanted.items
