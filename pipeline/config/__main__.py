"""python -m pipeline.config [params.yaml]: validate the whole file."""

from pipeline.config.params import main

if __name__ == "__main__":
    main()
