"""SAEBench-compatible evaluations run offline with saekit's own capture path, written in SAEBench's
output JSON schema: k-sparse probing on the sae-probes tasks (:mod:`.sparse_probing`) and feature
absorption on the first-letter task (:mod:`.absorption`).

    from saekit.eval.bench import SparseProbingConfig, absorption, core, meta_structure, sparse_probing, write_bench_report
    lm = saekit.load_model("smollm2-135m")
    probing = sparse_probing(saes, lm, SparseProbingConfig(tasks=("92_glue_sst2",)))
    tokens = saekit.tokens_from_config(saekit.TextConfig(n_tokens=8192, split="test"), lm.tokenizer)
    results = {"sparse_probing": probing, "absorption_first_letter": absorption(saes, lm), "core": core(saes, lm, tokens),
               "meta_structure_decoder_variance": meta_structure(saes)}
    write_bench_report(Path("bench"), results, title="", intro="")
"""

from saekit.eval.bench.absorption import AbsorptionConfig, absorption
from saekit.eval.bench.core import CoreConfig, core
from saekit.eval.bench.meta_structure import MetaStructureConfig, meta_structure
from saekit.eval.bench.report import write_bench_report
from saekit.eval.bench.sparse_probing import SparseProbingConfig, sparse_probing
from saekit.eval.bench.tasks import ProbeTask, list_tasks, load_task, make_task

__all__ = ["AbsorptionConfig", "CoreConfig", "MetaStructureConfig", "ProbeTask", "absorption", "core", "meta_structure", "SparseProbingConfig", "list_tasks", "load_task", "make_task", "sparse_probing", "write_bench_report"]
