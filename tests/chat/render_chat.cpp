// Renders chat templates for tests/chat/chat_vs_jinja2.py. Standard input: one JSON object a line
// {template, special, messages, tools, add_generation_prompt, continue_final_message, kwargs}; standard
// output: one line each, {"rendered": text} or {"error": message}.
#include <iostream>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"

using namespace llmserve;
using ojson = nlohmann::ordered_json;

int main() {
  for (std::string line; std::getline(std::cin, line);) {
    if (line.empty()) continue;
    const ojson r = ojson::parse(line);
    ojson out = ojson::object();
    try {
      ChatTemplate t(r.at("template").get<std::string>(), r.at("special"));
      ChatRenderOptions o;
      o.add_generation_prompt = r.at("add_generation_prompt").get<bool>();
      o.continue_final_message = r.value("continue_final_message", false);
      o.tools = r.at("tools");
      o.template_kwargs = r.at("kwargs");
      out["rendered"] = t.render(r.at("messages"), o);
    } catch (const std::exception& e) {
      out["error"] = e.what();
    }
    std::cout << out.dump(-1, ' ', false, ojson::error_handler_t::replace) << '\n';
  }
}
