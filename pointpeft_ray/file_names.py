"""Every file and folder name the tool writes, in one place, with what each holds.
Readers and writers import the name from here, so a folder written by one command is
found by another. Not here: names the user chooses (runs, searches, jobs, bank entries)
and a job's stage folders, which are named after the stage (jobs.spec.STAGES).
"""

# A training run's folder (train, pretrain; one per fine-tune of a job or multi-task stage)
LAST_DIR = "last"  # the checkpoint a rerun resumes from
BEST_DIR = "best"  # the best epoch's checkpoint, with the usable model
RUN_STATE_FILE = "run_state.pt"  # in each checkpoint: trained tensors, optimizer, progress, RNG
ADAPTER_DIR = "adapter"  # in the best checkpoint of a PEFT run
MODEL_FILE = "model.pt"  # in the best checkpoint of a full / linear run
PRETRAINED_FILE = "pretrain.pth"  # pre-trained weights, in the published Point-MAE layout
PROGRESS_FILE = "progress.json"  # the last finished epoch, for a stage's heartbeat
TENSORBOARD_DIR = "tensorboard"  # the run's scalars, for TensorBoard

# An adapter directory (models.peft.adapter_io)
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_weights.pt"
MEMORY_BANK_FILE = "memory_bank.arrow"

# A search's folder, and a fine-tune stage's
TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"  # a search's, or a fine-tune stage's beside its tasks table
BEST_CONFIG_FILE = "best_config.yaml"
TASKS_FILE = "tasks.parquet"  # one row per fine-tune of a stage
RAY_STORAGE_DIR = "ray"  # a stage's multi-worker runs: Ray Train's own folders

# A job's folder (jobs.runner)
JOB_FILE = "job.yaml"  # the resolved job: what ran
JOB_SUMMARY_FILE = "job_summary.json"
JOB_BANK_DIR = "adapters"  # the adapter bank of the job's PEFT runs
REPORT_DIR = "report"
REPORT_FILE = "report.txt"
COMPARISON_PLOT = "comparison.png"
PLOTS_DIR = "plots"  # the search report's plots, in a search folder or a job's report/

# A search report's plots (results.plots)
LEARNING_CURVES_PLOT = "learning_curves.png"
ACCURACY_VS_PARAMS_PLOT = "accuracy_vs_params.png"
ACCURACY_VS_SIZE_PLOT = "accuracy_vs_trainable_params.png"

# An adapter bank's folder (serving.adapter_bank)
BANK_INDEX_FILE = "index.json"
BANK_ADAPTERS_DIR = "adapters"  # one copied adapter directory per entry (named in index.json)
BANK_LOCK_FILE = ".index.lock"  # held while the index is rewritten

# The cache folder (data.cache.default_cache_dir): besides the prepared splits
MEMORY_BANKS_DIR = "memory_banks"  # memory banks built from a training split
PRETRAINED_DIR = "pretrained"  # pre-trained weights by config key (pretrain.cache)

# A cached pre-training's folder (pretrain.cache), beside its PRETRAINED_FILE
MANIFEST_FILE = "manifest.json"

# Any folder one process writes at a time (folder_lock)
WRITER_LOCK_FILE = ".pointpeft-writer.lock"
