"""`python -m pipeline.chat`: the chat client with the search tool (pipeline/agent.py), against
`make serve` or any OpenAI-compatible server. The template library is pipeline/chat/__init__.py."""

from pipeline.agent import main

if __name__ == "__main__":
    main()
