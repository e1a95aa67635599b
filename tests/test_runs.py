"""The run folder's file names (run_files.Files), as plans name them."""


def test_a_plan_names_the_files_its_run_writes_for_its_evaluation_and_method():
    """Files.listed is derived from the names of run_files.Files: the evaluation's files where the run evaluates,
    lm-eval's where eval.harness runs it, the reward curves and GRPO's samples for the methods after SFT."""
    from medqlora.run_files import Files

    sft = Files.listed(False).split(", ")
    assert {"adapter/", "config.yaml", "memory_table.md", "sample_responses.md/.jsonl"} <= set(sft)
    assert not set(Files.EVALUATION_FILES) & set(sft)
    full = Files.listed(True, lm_eval=True).split(", ")
    assert {"eval_baseline.json", "eval_report.md", "lm_eval_tasks/", "lm_eval_baseline.json"} <= set(full)
    assert Files.listed(False, method="grpo").endswith("grpo_samples.jsonl, reward_curves.png")
    assert Files.listed(False, method="dpo").endswith(", reward_curves.png")
