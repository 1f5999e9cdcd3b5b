"""SAEBench-compatible evaluations run offline with saekit's own capture path, written in SAEBench's
output JSON schema: k-sparse probing on the sae-probes tasks (:mod:`.sparse_probing`) and feature
absorption on the first-letter task (:mod:`.absorption`).

    from saekit.eval.bench import SparseProbingConfig, absorption, sparse_probing, write_bench_report
    lm = saekit.load_model("smollm2-135m")
    probing = sparse_probing(saes, lm, SparseProbingConfig(tasks=("92_glue_sst2",)))
    write_bench_report(Path("bench"), {"sparse_probing": probing, "absorption_first_letter": absorption(saes, lm)}, title="", intro="")
"""

from saekit.eval.bench.absorption import AbsorptionConfig, absorption
from saekit.eval.bench.report import write_bench_report
from saekit.eval.bench.sparse_probing import SparseProbingConfig, sparse_probing
from saekit.eval.bench.tasks import ProbeTask, list_tasks, load_task, make_task

__all__ = ["AbsorptionConfig", "ProbeTask", "absorption", "SparseProbingConfig", "list_tasks", "load_task", "make_task", "sparse_probing", "write_bench_report"]
