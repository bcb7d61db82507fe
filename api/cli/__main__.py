from falaj.api.cli import main

main()
