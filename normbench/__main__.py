"""`python -m normbench` == `normbench`."""

from .cli import main

main()
