"""Weights that change under a running policy: pushed into `variables()`
(`pushed_variables`, TF-Agents' actor-learner loop) or followed from a
checkpoint directory (`checkpoint_follower.CheckpointFollower`)."""
