"""Feedback on a policy's own samples: preference labels from the gold judge, a reward model or an AI judge.

ai_judge.py   an AI judge (RLAIF, Bai et al. 2022): a causal LM asked which of two replies better follows
              a written principle; the soft label is its next-token probability of "A" versus "B"
pairs.py      pure choices: which two responses form a pair, when a label is too weak, agreement with gold
sampling.py   `sample_preferences`: N samples per prompt from a policy, labelled and paired into DPO rows
config.py     the options of `posttrain preferences sample` and of the recipe stage `preferences`
"""
