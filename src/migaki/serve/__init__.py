"""`migaki serve`: an OpenAI-compatible server for runs and exports, with its request log
and feedback store."""
