"""This monorepo's policies (a package named like policy_runtime's own)."""

OWNER = "rl_monorepo"
