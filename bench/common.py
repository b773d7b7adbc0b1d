"""What every posttrain-vs-TRL benchmark shares (sft_vs_trl.py, reward_vs_trl.py, dpo_vs_trl.py), in one import.

The code lives in modules by topic, each with its own index of what it holds:
    templates.py    the model's own chat template on both sides, TRL's {% generation %}-marked version of it, and the
                    checks that both sides train on the same tokens with the same loss mask
    training.py     posttrain's training API, the hooks that clock and schedule a TRL Trainer as posttrain, and the
                    starting weights' fingerprint
    measure.py      how time and memory are measured, the same way on every side (StepClock, PassMeter)
    sides.py        the options every bench takes, each side in its own process, rotated rounds
    report.py       the environment, medians over rounds, tables, ratios, the verdict and the issue's goals
    preference.py   the preference pairs, their checks and the driver of reward_vs_trl.py and dpo_vs_trl.py
"""

from __future__ import annotations

# Re-exported: the benches and their tests read these as common.NAME.
# ruff: noqa: F401
from measure import PassMeter, StepClock, matmul_peak_flops, spread
from preference import (PAIR_KEYS, PairCheck, add_pair_args, check_pairs, check_same_pairs, counting_trainer, pair_data_line,
                        pair_length_sampler, pair_method_text, posttrain_pair_config, posttrain_pair_fit,
                        posttrain_pair_setup, posttrain_pairs, preference_file, preference_rows,
                        reward_read_elsewhere, run_pair_bench, split_preferences, trl_batching, trl_pair_batches,
                        trl_prepared)
from report import (MEASURE_HEADERS, MEASURES, Quality, environment, environment_line, environment_sentence,
                    goal_lines, markdown_table, measure_cells, ratio_lines, summarise, verdict_lines)
from sides import (DEFAULT_MODEL, OURS, ROOT, add_common_args, emit_result, run_rounds, run_side,
                   selected_sides)
from templates import (ChatCheck, LossTurns, assistant_turns, check_chats, derive_marked_template, end_of_turn_ids,
                       load_tokenizer, loss_turns, posttrain_batches, template_facts, trl_batches, trl_chat_template)
from training import (clock_callback, lr_at, nll_and_count, posttrain_schedule, posttrain_trainer, trl_optimizer,
                      weights_fingerprint)
