"""The ops floor (floor 4 of docs/architecture.md): the commands, and anything that starts processes
or drives Ray. It may import every floor below; nothing below imports it."""
