"""``python -m nlicot`` = the LightningCLI in nlicot/cli.py."""

from nlicot.cli import main

if __name__ == "__main__":
    main()
