"""Evaluation of fine-tuned models with the emergent-misalignment protocol (Betley et al. 2025).

- :mod:`ftflow.evaluation.questions` loads and validates question files and builds chat prompts;
- :mod:`ftflow.evaluation.judge` turns a local judge model's next-token distribution into a
  0-100 score, independent of how the judge's tokenizer splits numbers;
- :mod:`ftflow.evaluation.api_judge` does the same through an OpenAI-compatible endpoint;
- :mod:`ftflow.evaluation.summarize` computes misaligned shares with confidence intervals.
"""
