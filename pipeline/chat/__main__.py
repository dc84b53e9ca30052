"""`python -m pipeline.chat`: the chat client with the search tool (pipeline/chat/agent.py), against
`make serve` or any OpenAI-compatible server."""

from pipeline.chat.agent import main

if __name__ == "__main__":
    main()
