"""Source RL algorithms whose learning histories become datasets.

* :mod:`envs.learners.qlearning`: tabular Q-learning with decaying epsilon-greedy
  exploration (Dark Room, Key-to-Door).
* :mod:`envs.learners.bandits`: UCB1 and Thompson sampling (bandits).
* :mod:`envs.learners.history`: one learning history per task, recorded with
  ``history_id`` / ``task_id`` / ``episode_in_history``, and the learning curve of a store.
* :mod:`envs.learners.sac`: soft actor-critic in JAX for continuous control; its whole
  replay, from random to good, is a mixed-quality dataset.
"""
