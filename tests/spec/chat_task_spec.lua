-- chat_task_spec.lua: the chat protocol's spec (chat_spec.lua, which runs it on
-- scripts/chat.lua) run on examples/chat_task.lua, the same chat written with luahost.task.
-- In busted's environment, where describe and it are.
assert(loadfile("tests/spec/chat_spec.lua", "t", _ENV))("examples/chat_task.lua")
