"""Seeing what a model learned: perplexity, before/after comparison, task scores (see each module).

from tuneforge.evaluate import perplexity
print(perplexity(model, tokenizer, "heldout.txt").perplexity)
"""

from tuneforge.evaluate.perplexity import EvaluationError, PerplexityResult, perplexity

__all__ = ["EvaluationError", "PerplexityResult", "perplexity"]
