# Relaxed Recursive Transformers: tokenize -> convert per variant -> uptrain -> evaluate -> report.
#   snakemake --cores 2 all                          # embedded default (make run)
#   snakemake --cores 2 results/eval/rec-average.json # one variant and what it needs
#   snakemake --profile slurm all                    # the paper's experiment on SLURM
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless --configfile names another config: each config is complete
# on its own (schema defaults aside), so none silently inherits another's values.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        rules.aggregate.output,
        rules.plan.output,
