"""`erase attack`: does an erased concept come back under a determined prompt?

UnlearnDiffAtk (Zhang et al., 2023) optimises a few prompt tokens so that the erased model
denoises the original model's image of the concept as if the prompt asked for it, then draws
with the found prompt and lets a classifier judge. ``search`` holds the token parameterisations
(discrete tokens found through gradients, or a continuous soft prompt as an upper bound),
``slots`` puts them into the text encoders, ``runner`` is the command's flow and ``report`` its
output.
"""
