-- luacheck configuration (make lint). Scripts run on the luahost executable, specs on busted.
std = "lua54"
max_line_length = 100
-- Inside the host, `luahost` is a global; a script may set luahost.adopt to take over the
-- connections it inherits on reload. `arg` holds the script's arguments, as under lua(1).
read_globals = {
    luahost = {other_fields = true, fields = {adopt = {read_only = false}}},
    "arg",
}
files["tests/spec"] = {std = "+busted"}
files["examples/*_spec.lua"] = {std = "+busted"}
-- chat.lua keeps what must outlive a reload in one global table.
files["scripts/chat.lua"] = {globals = {"CHAT"}}
files["examples/chat_task.lua"] = {globals = {"CHAT_TASK"}}
