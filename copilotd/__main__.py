from copilotd.cli.main import main

main()
