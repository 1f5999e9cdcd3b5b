"""SAEBench-compatible evaluations run offline with saekit's own capture path, written in SAEBench's
output JSON schema: k-sparse probing on the sae-probes tasks (:mod:`.sparse_probing`).

    from saekit.eval.bench import SparseProbingConfig, sparse_probing, write_bench_report
    outputs = sparse_probing(saes, saekit.load_model("smollm2-135m"), SparseProbingConfig(tasks=("92_glue_sst2",)))
    write_bench_report(Path("bench"), outputs, title="k-sparse probing", intro="")
"""

from saekit.eval.bench.report import write_bench_report
from saekit.eval.bench.sparse_probing import SparseProbingConfig, sparse_probing
from saekit.eval.bench.tasks import ProbeTask, list_tasks, load_task, make_task

__all__ = ["ProbeTask", "SparseProbingConfig", "list_tasks", "load_task", "make_task", "sparse_probing", "write_bench_report"]
