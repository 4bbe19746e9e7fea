"""duplexgym.agents (see DESIGN.md); filled by later issues."""
