"""Model-side code: forward passes that return what losses need, per-example attention, scalar heads."""
