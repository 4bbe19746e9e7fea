"""duplexgym.envs (see DESIGN.md); filled by later issues."""
