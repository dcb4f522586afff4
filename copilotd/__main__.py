from copilotd._cli import main

main()
