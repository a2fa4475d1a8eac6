"""``python -m medcore_tp`` (and ``torchrun -m medcore_tp``) runs the command line."""

from medcore_tp.cli import main

if __name__ == "__main__":
    main()
