"""Individuals as groups of one: GPO on per-person ratings and comparisons, its baselines and evaluation.

A person's context is a few items they rated (a score on the dataset's scale, normalised to [0, 1]); the
targets are other items they rated. Item features are the LLM embedding of "prompt + item" (template
`gpo-resp-v1`) joined with a population prior fitted on the training people's ratings: the item's mean score
and its loadings on the main directions in which people differ (a truncated SVD of the mean-centred rating
matrix, unrated entries 0). People are split into meta-train (with validation people taken out of it) and
meta-test; nothing about a test person is seen before their context.

Kinds (GPOConfig.kind):
- "rating": one token per rated item, y = normalised score; the ridge readout starts at the latent-factor
  estimate mean + loadings @ z (z: ridge fit of the context residuals), the transformer learns corrections.
- "comparison": one token per pair (a, b) the person rated differently, x = x_a - x_b, y = 1 if a was preferred
  (appendix H: binary classification of every target pair).
- "comparison_bt": context tokens are such pairs, target tokens are single items whose output is a scalar score;
  trained with a Bradley-Terry loss on pairs of targets (P(a > b) = sigmoid(s_a - s_b)). Tokens carry one more
  feature: 1 for a pair, 0 for a single item.

Metrics per test person over their target items: RMSE on the original scale, Spearman rank correlation,
pairwise accuracy (pairs with different true scores ordered right; for the comparison kind, its predicted
probability on each pair), exact-level accuracy (the nearest scale level to the predicted score is the rating).

Modules, by stage: `priors` (content basis, rating prior, a person's features, fold priors), `splits` (people
splits and context draws), `episodes` (rating, comparison and Bradley-Terry episodes), `train` (meta-training and a
person's predictions), `baselines` (kNN, reward model, latent factor), `cv` (cross-validation folds of training
people, and prior_mean "auto" chosen on them), `evaluate` (every method on the same draws), `export` (the servable
checkpoint). The ranking and Bradley-Terry losses live with the model, in `service.gpo.losses`.
"""
