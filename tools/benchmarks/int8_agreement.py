"""int8 on a pixel policy: how often a trained Atari Q-network's greedy action changes.

The Nature-DQN network of `policy_zoo.atari_q_policy` is trained by behavioural
cloning on real Pong frames (ale-py, random play, 84x84 greyscale, 4 stacked)
with a scripted label: move the paddle toward the ball. Then, on held-out Pong
frames and on uniform random frames (what lite validation samples), it compares
TF's greedy actions with LiteRT's at int8: dynamic-range (what
`precision="int8"` converts) and full int8 calibrated on the training frames
(not offered). For the rows whose action changes it prints TF's own gap
between the two best Q-values, as a fraction of the Q-values' range: the rows
that flip are near-ties. Last, it loads the policy as a user would, with
`precision="int8"` and the held-out Pong frames as `validation_observations`,
and reports whether validation accepts it. Writes int8_agreement.json into
--output.

    bazel run //tools/benchmarks:int8_agreement -- [--steps 10000] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policy_runtime.policies.engines import lite_validation  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

_PADDLE, _BALL = 147, 236          # grey levels of the agent's paddle and of the ball
_NOOP, _UP, _DOWN = 0, 2, 3
_ACTIONS = 6                       # Pong's action set, as atari_q_policy's default


def pong_frames(count: int, seed: int = 0) -> np.ndarray:
  """`count` stacks of 4 greyscale 84x84 Pong frames (uint8), from random play."""
  import ale_py  # pylint: disable=import-outside-toplevel
  import gymnasium as gym  # pylint: disable=import-outside-toplevel
  gym.register_envs(ale_py)
  env = gym.make("ALE/Pong-v5", obs_type="grayscale", frameskip=4,
                 repeat_action_probability=0.0)
  rows, cols = np.linspace(34, 193, 84).astype(int), np.linspace(0, 159, 84).astype(int)
  rng = np.random.default_rng(seed)
  frame, _ = env.reset(seed=seed)
  stack, out = [frame[rows][:, cols]] * 4, []
  while len(out) < count:
    frame, _, terminated, truncated, _ = env.step(int(rng.integers(_ACTIONS)))
    stack = stack[1:] + [frame[rows][:, cols]]
    out.append(np.stack(stack, -1))
    if terminated or truncated:
      frame, _ = env.reset()
      stack = [frame[rows][:, cols]] * 4
  return np.array(out)


def follow_the_ball(frames: np.ndarray) -> np.ndarray:
  """The scripted action per stack: UP or DOWN toward the ball, else NOOP."""
  last, rows = frames[..., -1], np.arange(84)[None, :]
  paddle, ball = (last[:, :, 70:80] == _PADDLE).any(2), (last == _BALL).any(2)
  paddle_row = (paddle * rows).sum(1) / np.maximum(paddle.sum(1), 1)
  ball_row = (ball * rows).sum(1) / np.maximum(ball.sum(1), 1)
  label = np.where(ball_row < paddle_row - 2, _UP,
                   np.where(ball_row > paddle_row + 2, _DOWN, _NOOP))
  return np.where(ball.any(1) & paddle.any(1), label, _NOOP)


def train(net, frames: np.ndarray, labels: np.ndarray, steps: int, seed: int = 0) -> float:
  """Regresses the Q-values onto one-hot labels (batches of 32); returns the last loss."""
  optimizer = tf.keras.optimizers.Adam(3e-4)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(net(x)[0] - tf.one_hot(y, _ACTIONS)))
    grads = tape.gradient(loss, net.trainable_variables)
    optimizer.apply_gradients(zip(grads, net.trainable_variables))
    return loss

  rng = np.random.default_rng(seed)
  loss = float("nan")
  for _ in range(steps):
    index = rng.integers(0, len(frames), 32)
    loss = float(step(frames[index], labels[index]))
  return loss


def int8_model(net, calibration: np.ndarray | None) -> bytes:
  """The network converted with dynamic-range int8, or full int8 calibrated on `calibration`."""
  @tf.function(input_signature=[tf.TensorSpec([None, 84, 84, 4], tf.uint8)])
  def q_values(frames):
    return net(frames)[0]

  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [q_values.get_concrete_function()], net)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if calibration is not None:
    converter.representative_dataset = lambda: ([frame[None]] for frame in calibration)
  return converter.convert()


def run_lite(model: bytes, frames: np.ndarray, batch: int = 256) -> np.ndarray:
  interpreter = Interpreter(model_content=model)
  interpreter.resize_tensor_input(0, [batch, 84, 84, 4])
  interpreter.allocate_tensors()
  index_in = interpreter.get_input_details()[0]["index"]
  index_out = interpreter.get_output_details()[0]["index"]
  out = []
  for start in range(0, len(frames), batch):
    interpreter.set_tensor(index_in, frames[start:start + batch])
    interpreter.invoke()
    out.append(interpreter.get_tensor(index_out).copy())
  return np.concatenate(out)


def load_int8(directory: str, frames) -> str:
  """What validation says of `directory` on int8 LiteRT, validated on `frames` (None: sampled)."""
  try:
    loaded = SavedModelPyTFEagerPolicy(directory, load_specs_from_pbtxt=True, backend="lite",
                                       precision="int8", validation_observations=frames)
  except ValueError as e:
    return "refused: " + str(e).splitlines()[0].replace(f"{directory}: ", "", 1)
  agreement = loaded.lite_validation.agreement["action"]
  return (f"loads, greedy actions agree with TF on {agreement:.2%} of "
          f"{lite_validation.AGREEMENT_ROWS} sampled rows")


def compare(name: str, reference: np.ndarray, got: np.ndarray, labels: np.ndarray) -> dict:
  """Agreement of greedy actions, and TF's top-two gap on the rows that differ."""
  differ = reference.argmax(1) != got.argmax(1)
  top = np.sort(reference, 1)
  spread = float(reference.max() - reference.min())
  gaps = (top[differ, -1] - top[differ, -2]) / spread
  return {"frames": name, "rows": len(reference),
          "tf_label_accuracy": float((reference.argmax(1) == labels).mean()),
          "agreement": float(1.0 - differ.mean()), "rows_differing": int(differ.sum()),
          "max_tf_gap_of_differing_rows": float(gaps.max()) if gaps.size else 0.0,
          "median_tf_gap_all_rows": float(np.median(top[:, -1] - top[:, -2]) / spread)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10000)
  parser.add_argument("--frames", type=int, default=8192)
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()

  frames = pong_frames(args.frames)
  held_out = len(frames) // 4
  train_frames, test_frames = frames[held_out:], frames[:held_out]
  policy = policy_zoo.atari_q_policy(num_actions=_ACTIONS)
  net = policy.wrapped_policy._q_network  # pylint: disable=protected-access
  loss = train(net, train_frames, follow_the_ball(train_frames), args.steps)
  noise = np.random.default_rng(1).integers(0, 256, (held_out, 84, 84, 4), dtype=np.uint8)
  models = {"dynamic-range int8 (precision='int8')": int8_model(net, None),
            "full int8, calibrated on Pong frames": int8_model(net, train_frames[::24])}
  rows = []
  for frames_name, x in (("Pong, held out", test_frames), ("uniform random", noise)):
    reference = np.concatenate([net(x[i:i + 256])[0].numpy() for i in range(0, len(x), 256)])
    for model_name, model in models.items():
      rows.append({"model": model_name} | compare(frames_name, reference, run_lite(model, x),
                                                  follow_the_ball(x)))
  with tempfile.TemporaryDirectory() as directory:
    policy_zoo.save(policy, directory)
    loads = {"sampled frames": load_int8(directory, None),
             f"the {held_out} held-out Pong frames": load_int8(directory, test_frames)}
  print(f"\ntrained {args.steps} steps (final loss {loss:.4f})\n")
  print("| frames | int8 | TF follows the script | int8 agrees with TF | rows that differ "
        "| their TF top-two gap, at most (of the Q range) |")
  print("|---|---|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['frames']} | {r['model']} | {r['tf_label_accuracy']:.1%} | {r['agreement']:.2%} "
          f"| {r['rows_differing']} of {r['rows']} | {r['max_tf_gap_of_differing_rows']:.2%} |")
  for frames_name, verdict in loads.items():
    print(f"\nprecision='int8' validated on {frames_name}: {verdict}")
  os.makedirs(args.output, exist_ok=True)
  with open(os.path.join(args.output, "int8_agreement.json"), "w") as f:
    json.dump({"steps": args.steps, "final_loss": loss, "rows": rows, "int8_loads": loads,
               "machine": benchmark_output.machine()}, f, indent=1)
  print(f"\nwrote {args.output}/int8_agreement.json")


if __name__ == "__main__":
  main()
