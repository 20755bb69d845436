from symdiff_cli.cli import main

main()
