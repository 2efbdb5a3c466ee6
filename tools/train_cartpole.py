"""Trains the embedded default policy: a small CartPole Q-network, exported with PolicySaver.

Training is the cross-entropy method over the network's weights (a population
of weight vectors, keep the best, refit a Gaussian), evaluated on real
CartPole-v0 episodes; it solves CartPole in about a minute on two cores. The
result is a TF-Agents `GreedyPolicy(QPolicy(QNetwork))` saved with
`PolicySaver` into `tools/default_policy/`.

    bazel run //tools:train_cartpole -- --output "$PWD/tools/default_policy"
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.environments import suite_gym  # noqa: E402
from tf_agents.networks import q_network  # noqa: E402
from tf_agents.policies import greedy_policy  # noqa: E402
from tf_agents.policies import q_policy  # noqa: E402
from tf_agents.specs import tensor_spec  # noqa: E402
from tqdm import tqdm  # noqa: E402

from tools import policy_zoo  # noqa: E402

ENV_NAME = "CartPole-v0"
HIDDEN = (16,)


def build_policy(env):
  obs_spec = tensor_spec.from_spec(env.observation_spec())
  action_spec = tensor_spec.from_spec(env.action_spec())
  net = q_network.QNetwork(obs_spec, action_spec, fc_layer_params=HIDDEN)
  net.create_variables()
  time_step_spec = tensor_spec.from_spec(env.time_step_spec())
  return greedy_policy.GreedyPolicy(q_policy.QPolicy(time_step_spec, action_spec, q_network=net)), net


def _forward(weights, shapes, obs):
  """The Q-network's forward pass in numpy (dense-relu..., dense)."""
  params, i = [], 0
  for shape in shapes:
    size = int(np.prod(shape))
    params.append(weights[i:i + size].reshape(shape))
    i += size
  h = obs
  for k in range(0, len(params) - 2, 2):
    h = np.maximum(h @ params[k] + params[k + 1], 0)
  return h @ params[-2] + params[-1]


def episode_return(env, weights, shapes, seed) -> float:
  env.seed(seed)
  step = env.reset()
  total = 0.0
  while not step.is_last():
    step = env.step(int(np.argmax(_forward(weights, shapes, step.observation))))
    total += float(step.reward)
  return total


def train(env, shapes, iterations: int, population: int, elite: int, seed: int):
  rng = np.random.default_rng(seed)
  size = sum(int(np.prod(s)) for s in shapes)
  mean, std = np.zeros(size), np.ones(size)
  for it in tqdm(range(iterations), desc="cross-entropy method"):
    candidates = mean + std * rng.standard_normal((population, size))
    scores = np.array([np.mean([episode_return(env, w, shapes, seed * 1000 + it * 10 + k)
                                for k in range(2)]) for w in candidates])
    best = candidates[np.argsort(scores)[-elite:]]
    mean, std = best.mean(axis=0), best.std(axis=0) + 0.05
    if scores[np.argsort(scores)[-elite:]].min() >= 200:
      break
  return mean


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", required=True, help="directory to write the SavedModel to")
  parser.add_argument("--iterations", type=int, default=30)
  parser.add_argument("--population", type=int, default=40)
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args()

  env = suite_gym.load(ENV_NAME)
  tf.random.set_seed(args.seed)
  policy, net = build_policy(env)
  shapes = [tuple(v.shape) for v in net.trainable_variables]
  weights = train(env, shapes, args.iterations, args.population, elite=8, seed=args.seed)
  i = 0
  for v in net.trainable_variables:
    size = int(np.prod(v.shape))
    v.assign(weights[i:i + size].reshape(v.shape).astype(np.float32))
    i += size
  returns = [episode_return(env, weights, shapes, 10_000 + k) for k in range(20)]
  print(f"average return over 20 evaluation episodes: {np.mean(returns):.1f}")
  policy_zoo.save(policy, args.output, train_step=args.iterations,
                  metadata={"env_name": tf.Variable(ENV_NAME),
                            "trainer": tf.Variable("cross-entropy method")})
  print(f"saved to {args.output}")


if __name__ == "__main__":
  main()
