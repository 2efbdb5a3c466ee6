"""Evaluation over many episodes on Ray workers (`evaluation`) and the local
Ray instance it starts (`local_ray`, no TensorFlow). Only this package needs Ray."""
