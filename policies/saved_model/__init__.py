"""Reading a SavedModel exported by TF-Agents' `PolicySaver`, with TensorFlow.

Every file access (`storage`, through TF's file systems), the static audit
of the graph (`graph_audit`), loading and the audited snapshot (`loading`),
the specs (`specs`), the variable restore (`variable_restore`), the
marshaling plan compiled once per policy (`marshaling_plan`), update errors
(`checkpoint_errors`) and what differs between TF stacks (`compat`).
"""
