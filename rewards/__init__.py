"""duplexgym.rewards (see DESIGN.md); filled by later issues."""
