"""`python -m sgl.train_eagle3`: see sgl.runtime.train_eagle3."""
from sgl.runtime.train_eagle3 import main

if __name__ == "__main__":
    main()
