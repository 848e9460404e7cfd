"""Evaluation of fine-tuned models with the emergent-misalignment protocol (Betley et al. 2025).

- :mod:`ftflow.evaluation.questions` loads and validates question files and builds chat prompts;
- :mod:`ftflow.evaluation.judge` turns a local judge model's next-token distribution into a
  0-100 score, independent of how the judge's tokenizer splits numbers;
- :mod:`ftflow.evaluation.api_judge` does the same through an OpenAI-compatible endpoint;
- :mod:`ftflow.evaluation.summarize` computes misaligned shares with confidence intervals;
- :mod:`ftflow.evaluation.generate` samples answers (loading in :mod:`~.loading`, the decoding
  loop in :mod:`~.sampling`);
- :mod:`ftflow.evaluation.pipeline` judges, summarizes and compares the workflow's files;
- :mod:`ftflow.evaluation.lm_eval_runner` runs lm-evaluation-harness (tasks in
  :mod:`~.lm_eval_tasks`).
"""
