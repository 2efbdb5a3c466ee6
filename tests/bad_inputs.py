"""Bad calls on the LSTM actor fixture and the first line of the error each must give.

Shared by every policy class that validates through the native plan
(`SavedModelPyTFEagerPolicy` on both engines, `CompiledPolicy`).
"""

import threading

import numpy as np
from tf_agents.trajectories import time_step as ts


def lstm_step(rng=None, batch=None):
  rng = rng or np.random.default_rng(0)
  outer = () if batch is None else (batch,)
  return ts.TimeStep(np.ones(outer, np.int32), np.zeros(outer, np.float32),
                     np.ones(outer, np.float32),
                     {"position": rng.standard_normal(outer + (3,)).astype(np.float32),
                      "velocity": rng.standard_normal(outer + (2,)).astype(np.float32)})


_OBS = "time_step.observation"
# (name, mutate(step, state) -> (step, state), error type, first-line pattern)
BAD_CALLS = [
    ("float64 for float32", lambda s, st: (s._replace(observation={**s.observation, "position": s.observation["position"].astype(np.float64)}), st),
     TypeError, rf"^{_OBS}\['position'\]: expected float32\[3\], got float64\[3\]$"),
    ("float step_type", lambda s, st: (s._replace(step_type=np.float32(1)), st),
     TypeError, r"^time_step\.step_type: expected int32\[\], got float32\[\]$"),
    ("python float step_type", lambda s, st: (s._replace(step_type=0.5), st),
     TypeError, r"^time_step\.step_type: expected int32\[\], got float of float64\[\]$"),
    ("ragged list", lambda s, st: (s._replace(observation={**s.observation, "velocity": [1.0, [2.0]]}), st),
     ValueError, rf"^{_OBS}\['velocity'\]: expected float32\[2\], got a list that is not a regular array$"),
    ("wrong rank", lambda s, st: (s._replace(observation={**s.observation, "velocity": np.zeros((2, 1), np.float32)}), st),
     ValueError, rf"^{_OBS}\['velocity'\]: expected float32\[2\], got float32\[2,1\]$"),
    ("batched step for unbatched policy", lambda s, st: (lstm_step(batch=1), st),
     ValueError, r"^time_step\.step_type: expected int32\[\], got int32\[1\] \(a batched step"),
    ("missing key", lambda s, st: (s._replace(observation={"position": s.observation["position"]}), st),
     ValueError, rf"^{_OBS}\['velocity'\]: missing key"),
    ("extra key", lambda s, st: (s._replace(observation={**s.observation, "speed": np.zeros(1)}), st),
     ValueError, rf"^{_OBS}: unexpected key 'speed'"),
    ("None leaf", lambda s, st: (s._replace(reward=None), st),
     TypeError, r"^time_step\.reward: expected float32\[\], got None$"),
    ("string leaf", lambda s, st: (s._replace(discount="1.0"), st),
     TypeError, r"^time_step\.discount: expected float32\[\], got str$"),
    ("object array", lambda s, st: (s._replace(observation={**s.observation, "velocity": np.array([None, 1], dtype=object)}), st),
     TypeError, rf"^{_OBS}\['velocity'\]: expected float32\[2\], got object\[2\]$"),
    ("arbitrary object", lambda s, st: (s._replace(reward=threading.Lock()), st),
     TypeError, r"^time_step\.reward: expected float32\[\], got _thread\.lock$"),
    ("dict for TimeStep", lambda s, st: (s._asdict(), st),
     TypeError, r"^time_step: expected TimeStep\(step_type, reward, discount, observation\), got dict$"),
    ("plain tuple for TimeStep", lambda s, st: (tuple(s), st),
     TypeError, r"^time_step: expected TimeStep\(step_type, reward, discount, observation\), got tuple$"),
    ("missing policy state", lambda s, st: (s, ()),
     ValueError, r"^policy_state: expected a list or tuple of 2, got tuple of 0$"),
    ("unbatched policy state", lambda s, st: (s, [x[0] for x in st]),
     ValueError, r"^policy_state\[0\]: expected float32\[1,16\], got float32\[16\] \(missing the batch"),
    ("state of wrong size", lambda s, st: (s, [np.zeros((1, 8), np.float32)] * 2),
     ValueError, r"^policy_state\[0\]: expected float32\[1,16\], got float32\[1,8\]$"),
    ("state as a dict", lambda s, st: (s, {"h": st[0], "c": st[1]}),
     TypeError, r"^policy_state: expected a list or tuple of 2, got dict$"),
]
