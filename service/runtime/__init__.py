"""Runtime building blocks: plain constructors, no FastAPI and no Settings."""
