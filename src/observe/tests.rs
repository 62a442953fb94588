//! Tests of `observe`: every API family's bodies and streams, whole and in any chunking, with
//! recorded fixtures; truncation within the byte budget, malformed and cut input, usage-only
//! reading, and the shared types.

use super::assembly::TOOL_CALL_COST;
use super::types::Usage;
use super::*;

const CHAT_STREAM_TEXT: &str = r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"! Comment ça"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":" va?\n\"Bien\""},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}

data: [DONE]

"#;

const CHAT_STREAM_TOOLS: &str = r#"data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"location\":\"Paris, France\"}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_7xh3Yt1qpQ2Hc0oWkbUoRRaZ","type":"function","function":{"name":"get_time","arguments":""}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"tz\":\"CET\"}"}}]},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-BoJ2yq1ZQ6nGmBJzGvBWk0yNiwkEK","object":"chat.completion.chunk","created":1751296540,"model":"gpt-4.1-2025-04-14","service_tier":"default","system_fingerprint":"fp_51e1070cf2","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}

data: [DONE]

"#;

const CHAT_BODY_TEXT: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    },
    {
      "index": 1,
      "message": {"role": "assistant", "content": "Second choice", "refusal": null, "annotations": []},
      "logprobs": null,
      "finish_reason": "length"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_f9f4fb6dbf"
}"#;

const CHAT_BODY_TOOLS: &str = r#"{
  "id": "chatcmpl-abc123",
  "object": "chat.completion",
  "created": 1699896916,
  "model": "gpt-4o-mini",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": null,
        "tool_calls": [
          {"id": "call_abc123", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\n\"location\": \"Boston, MA\"\n}"}},
          {"id": "call_def456", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ],
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99, "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
  "service_tier": "default",
  "system_fingerprint": "fp_44709d6fcb"
}"#;

const COMPLETIONS_STREAM: &str = r#"data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":"This","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb"}

data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":" is a test","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb"}

data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[{"text":".","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb"}

data: {"id":"cmpl-7iA7iJjj8V2zOkCGvWF2hAkDWBQZe","object":"text_completion","created":1690759702,"choices":[],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_44709d6fcb","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}

data: [DONE]

"#;

const COMPLETIONS_BODY: &str = r#"{
  "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
  "object": "text_completion",
  "created": 1589478378,
  "model": "gpt-3.5-turbo-instruct",
  "system_fingerprint": "fp_44709d6fcb",
  "choices": [
    {
      "text": "\n\nThis is indeed a test",
      "index": 0,
      "logprobs": null,
      "finish_reason": "length"
    }
  ],
  "usage": {
    "prompt_tokens": 5,
    "completion_tokens": 7,
    "total_tokens": 12
  }
}"#;

const RESPONSES_STREAM_TEXT: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}

event: response.in_progress
data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"in_progress","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"in_progress","role":"assistant","content":[]}}

event: response.content_part.added
data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":"Hi","logprobs":[]}

event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"delta":" there! How can I assist you today?","logprobs":[]}

event: response.output_text.done
data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"text":"Hi there! How can I assist you today?","logprobs":[]}

event: response.content_part.done
data: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hi there! How can I assist you today?","annotations":[]}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I assist you today?","annotations":[]}]}}

event: response.completed
data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"completed","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.","max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hi there! How can I assist you today?","annotations":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":37,"input_tokens_details":{"cached_tokens":0},"output_tokens":11,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":48},"user":null,"metadata":{}}}

"#;

const RESPONSES_STREAM_TOOLS: &str = r#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_68a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5","object":"response","created_at":1755430000,"status":"in_progress","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[{"type":"function","description":"Get the weather","name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}},"required":["location"],"additionalProperties":false},"strict":true}],"top_p":1.0,"truncation":"disabled","usage":null,"user":null,"metadata":{}}}

event: response.output_item.added
data: {"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"fc_68a1b2c3d4e5f6a7","type":"function_call","status":"in_progress","arguments":"","call_id":"call_pQ2h7Yt1xa9XTPNJ32zg2hcA","name":"get_weather"}}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","sequence_number":2,"item_id":"fc_68a1b2c3d4e5f6a7","output_index":0,"delta":"{\"location\":"}

event: response.function_call_arguments.delta
data: {"type":"response.function_call_arguments.delta","sequence_number":3,"item_id":"fc_68a1b2c3d4e5f6a7","output_index":0,"delta":"\"Paris, France\"}"}

event: response.function_call_arguments.done
data: {"type":"response.function_call_arguments.done","sequence_number":4,"item_id":"fc_68a1b2c3d4e5f6a7","output_index":0,"arguments":"{\"location\":\"Paris, France\"}"}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":5,"output_index":0,"item":{"id":"fc_68a1b2c3d4e5f6a7","type":"function_call","status":"completed","arguments":"{\"location\":\"Paris, France\"}","call_id":"call_pQ2h7Yt1xa9XTPNJ32zg2hcA","name":"get_weather"}}

event: response.output_item.done
data: {"type":"response.output_item.done","sequence_number":6,"output_index":1,"item":{"id":"fc_68a1b2c3d4e5f6a8","type":"function_call","status":"completed","arguments":"{\"tz\":\"CET\"}","call_id":"call_Zk81Yt1xa9XTPNJ32zg2hcB","name":"get_time"}}

event: response.completed
data: {"type":"response.completed","sequence_number":7,"response":{"id":"resp_68a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5","object":"response","created_at":1755430000,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"fc_68a1b2c3d4e5f6a7","type":"function_call","status":"completed","arguments":"{\"location\":\"Paris, France\"}","call_id":"call_pQ2h7Yt1xa9XTPNJ32zg2hcA","name":"get_weather"},{"id":"fc_68a1b2c3d4e5f6a8","type":"function_call","status":"completed","arguments":"{\"tz\":\"CET\"}","call_id":"call_Zk81Yt1xa9XTPNJ32zg2hcB","name":"get_time"}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":291,"input_tokens_details":{"cached_tokens":0},"output_tokens":23,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":314},"user":null,"metadata":{}}}

"#;

const RESPONSES_STREAM_INCOMPLETE: &str = r#"event: response.output_text.delta
data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67ca","output_index":0,"content_index":0,"delta":"Once upon","logprobs":[]}

event: response.incomplete
data: {"type":"response.incomplete","sequence_number":5,"response":{"id":"resp_67ca","object":"response","created_at":1741290958,"status":"incomplete","error":null,"incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-4.1-2025-04-14","output":[],"usage":{"input_tokens":12,"output_tokens":2,"total_tokens":14},"metadata":{}}}

"#;

const RESPONSES_BODY_TEXT: &str = r#"{
  "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
  "object": "response",
  "created_at": 1741476777,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4o-2024-08-06",
  "output": [
    {
      "type": "reasoning",
      "id": "rs_67ccd3a9da748190",
      "summary": []
    },
    {
      "type": "message",
      "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
      "status": "completed",
      "role": "assistant",
      "content": [
        {"type": "output_text", "text": "The image depicts a scenic landscape.", "annotations": []},
        {"type": "refusal", "refusal": "not this part"},
        {"type": "output_text", "text": " With a wooden boardwalk.", "annotations": []}
      ]
    }
  ],
  "parallel_tool_calls": true,
  "previous_response_id": null,
  "reasoning": {"effort": null, "summary": null},
  "store": true,
  "temperature": 1.0,
  "text": {"format": {"type": "text"}},
  "tool_choice": "auto",
  "tools": [],
  "top_p": 1.0,
  "truncation": "disabled",
  "usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 52, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 380},
  "user": null,
  "metadata": {}
}"#;

const RESPONSES_BODY_TOOLS: &str = r#"{
  "id": "resp_67ca09c5efe0819096d0511c92b8c890096610f474011cc0",
  "object": "response",
  "created_at": 1741294021,
  "status": "completed",
  "error": null,
  "incomplete_details": null,
  "instructions": null,
  "max_output_tokens": null,
  "model": "gpt-4.1-2025-04-14",
  "output": [
    {
      "type": "function_call",
      "id": "fc_67ca09c6bedc8190a7abfec07b1a1332096610f474011cc0",
      "call_id": "call_unLAR8MvFNptuiZK6K6HCy5k",
      "name": "get_current_weather",
      "arguments": "{\"location\":\"Boston, MA\",\"unit\":\"celsius\"}",
      "status": "completed"
    }
  ],
  "parallel_tool_calls": true,
  "previous_response_id": null,
  "reasoning": {"effort": null, "summary": null},
  "store": true,
  "temperature": 1.0,
  "text": {"format": {"type": "text"}},
  "tool_choice": "auto",
  "tools": [{"type": "function", "description": "Get the current weather in a given location", "name": "get_current_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "additionalProperties": false, "required": ["location", "unit"]}, "strict": true}],
  "top_p": 1.0,
  "truncation": "disabled",
  "usage": {"input_tokens": 291, "output_tokens": 23, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 314},
  "user": null,
  "metadata": {}
}"#;

const MESSAGES_STREAM_TEXT: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", world — ünïcode\n"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"#;

const MESSAGES_STREAM_TOOLS: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants the weather."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Okay, let me check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: ping
data: {"type": "ping"}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

const MESSAGES_BODY_TEXT: &str = r#"{
  "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-20250514",
  "content": [
    {"type": "text", "text": "Hi! My name is Claude."},
    {"type": "text", "text": " Nice to meet you.", "citations": null}
  ],
  "stop_reason": "max_tokens",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 503,
    "service_tier": "standard"
  }
}"#;

const MESSAGES_BODY_TOOLS: &str = r#"{
  "id": "msg_01Aq9w938a90dw8q",
  "type": "message",
  "role": "assistant",
  "model": "claude-opus-4-1-20250805",
  "content": [
    {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {"input_tokens": 384, "output_tokens": 92}
}"#;

/// Observes `body` fed in pieces of `piece` bytes.
fn observe(shape: ApiShape, streaming: bool, body: &[u8], piece: usize, max: usize) -> Observation {
    let mut observer = Observer::new(shape, streaming, max);
    for chunk in body.chunks(piece.max(1)) {
        observer.feed(chunk);
    }
    observer.finish(200, true)
}

fn call(name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        name: name.to_owned(),
        arguments: arguments.to_owned(),
    }
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
    }
}

struct Case {
    name: &'static str,
    shape: ApiShape,
    streaming: bool,
    body: &'static str,
    text: &'static str,
    tool_calls: Vec<ToolCall>,
    finish: FinishReason,
    usage: Usage,
}

fn cases() -> Vec<Case> {
    use ApiShape::*;
    vec![
        Case {
            name: "chat stream text",
            shape: ChatCompletions,
            streaming: true,
            body: CHAT_STREAM_TEXT,
            text: "Hello! Comment ça va?\n\"Bien\"",
            tool_calls: vec![],
            finish: FinishReason::Stop,
            usage: usage(19, 10),
        },
        Case {
            name: "chat stream tools",
            shape: ChatCompletions,
            streaming: true,
            body: CHAT_STREAM_TOOLS,
            text: "",
            tool_calls: vec![
                call("get_weather", r#"{"location":"Paris, France"}"#),
                call("get_time", r#"{"tz":"CET"}"#),
            ],
            finish: FinishReason::ToolCalls,
            usage: Usage::default(),
        },
        Case {
            name: "chat body text",
            shape: ChatCompletions,
            streaming: false,
            body: CHAT_BODY_TEXT,
            text: "Hello! How can I assist you today?",
            tool_calls: vec![],
            finish: FinishReason::Stop,
            usage: usage(19, 10),
        },
        Case {
            name: "chat body tools",
            shape: ChatCompletions,
            streaming: false,
            body: CHAT_BODY_TOOLS,
            text: "",
            tool_calls: vec![
                call("get_current_weather", "{\n\"location\": \"Boston, MA\"\n}"),
                call("get_time", "{}"),
            ],
            finish: FinishReason::ToolCalls,
            usage: usage(82, 17),
        },
        Case {
            name: "completions stream",
            shape: Completions,
            streaming: true,
            body: COMPLETIONS_STREAM,
            text: "This is a test.",
            tool_calls: vec![],
            finish: FinishReason::Length,
            usage: usage(5, 7),
        },
        Case {
            name: "completions body",
            shape: Completions,
            streaming: false,
            body: COMPLETIONS_BODY,
            text: "\n\nThis is indeed a test",
            tool_calls: vec![],
            finish: FinishReason::Length,
            usage: usage(5, 7),
        },
        Case {
            name: "responses stream text",
            shape: Responses,
            streaming: true,
            body: RESPONSES_STREAM_TEXT,
            text: "Hi there! How can I assist you today?",
            tool_calls: vec![],
            finish: FinishReason::Stop,
            usage: usage(37, 11),
        },
        Case {
            name: "responses stream tools",
            shape: Responses,
            streaming: true,
            body: RESPONSES_STREAM_TOOLS,
            text: "",
            tool_calls: vec![
                call("get_weather", r#"{"location":"Paris, France"}"#),
                call("get_time", r#"{"tz":"CET"}"#),
            ],
            finish: FinishReason::ToolCalls,
            usage: usage(291, 23),
        },
        Case {
            name: "responses stream incomplete",
            shape: Responses,
            streaming: true,
            body: RESPONSES_STREAM_INCOMPLETE,
            text: "Once upon",
            tool_calls: vec![],
            finish: FinishReason::Length,
            usage: usage(12, 2),
        },
        Case {
            name: "responses body text",
            shape: Responses,
            streaming: false,
            body: RESPONSES_BODY_TEXT,
            text: "The image depicts a scenic landscape. With a wooden boardwalk.",
            tool_calls: vec![],
            finish: FinishReason::Stop,
            usage: usage(328, 52),
        },
        Case {
            name: "responses body tools",
            shape: Responses,
            streaming: false,
            body: RESPONSES_BODY_TOOLS,
            text: "",
            tool_calls: vec![call(
                "get_current_weather",
                r#"{"location":"Boston, MA","unit":"celsius"}"#,
            )],
            finish: FinishReason::ToolCalls,
            usage: usage(291, 23),
        },
        Case {
            name: "messages stream text",
            shape: Messages,
            streaming: true,
            body: MESSAGES_STREAM_TEXT,
            text: "Hello, world — ünïcode\n",
            tool_calls: vec![],
            finish: FinishReason::Stop,
            usage: usage(25, 15),
        },
        Case {
            name: "messages stream tools",
            shape: Messages,
            streaming: true,
            body: MESSAGES_STREAM_TOOLS,
            text: "Okay, let me check.",
            tool_calls: vec![call("get_weather", r#"{"location": "San Francisco, CA"}"#)],
            finish: FinishReason::ToolCalls,
            usage: usage(472, 89),
        },
        Case {
            name: "messages body text",
            shape: Messages,
            streaming: false,
            body: MESSAGES_BODY_TEXT,
            text: "Hi! My name is Claude. Nice to meet you.",
            tool_calls: vec![],
            finish: FinishReason::Length,
            usage: usage(2095, 503),
        },
        Case {
            name: "messages body tools",
            shape: Messages,
            streaming: false,
            body: MESSAGES_BODY_TOOLS,
            text: "I'll check the current weather in San Francisco for you.",
            tool_calls: vec![call(
                "get_weather",
                r#"{"location":"San Francisco, CA","unit":"celsius"}"#,
            )],
            finish: FinishReason::ToolCalls,
            usage: usage(384, 92),
        },
    ]
}

#[test]
fn reads_every_api_whatever_the_chunking() {
    for case in cases() {
        let body = case.body.as_bytes();
        let whole = observe(case.shape, case.streaming, body, body.len(), 1 << 20);
        assert_eq!(whole.failure, None, "{}", case.name);
        assert_eq!(whole.status, 200, "{}", case.name);
        assert_eq!(whole.text, case.text, "{}", case.name);
        assert_eq!(whole.tool_calls, case.tool_calls, "{}", case.name);
        assert_eq!(whole.finish_reason, Some(case.finish), "{}", case.name);
        assert_eq!(whole.usage, case.usage, "{}", case.name);
        assert!(!whole.truncated, "{}", case.name);
        for piece in [1, 2, 3, 7, 64, 1000] {
            let split = observe(case.shape, case.streaming, body, piece, 1 << 20);
            assert_eq!(split, whole, "{} in pieces of {piece}", case.name);
        }
    }
}

#[test]
fn reads_crlf_streams() {
    for case in cases().into_iter().filter(|c| c.streaming) {
        let crlf = case.body.replace('\n', "\r\n");
        // JSON escapes are untouched: only the raw line breaks changed.
        let got = observe(case.shape, true, crlf.as_bytes(), 5, 1 << 20);
        assert_eq!(
            got,
            observe(case.shape, true, case.body.as_bytes(), 5, 1 << 20),
            "{}",
            case.name
        );
    }
}

/// Where each streaming fixture's terminal event starts.
fn terminal(body: &str) -> usize {
    [
        "data: [DONE]",
        "event: message_stop",
        "event: response.completed",
        "event: response.incomplete",
    ]
    .iter()
    .find_map(|marker| body.rfind(marker))
    .unwrap_or(body.len())
}

#[test]
fn stream_cut_short_is_malformed() {
    for case in cases().into_iter().filter(|c| c.streaming) {
        let end = terminal(case.body);
        assert!(end < case.body.len(), "{}", case.name);
        let cut = &case.body.as_bytes()[..end];
        let got = observe(case.shape, true, cut, 3, 1 << 20);
        assert_eq!(
            got.failure,
            Some(Failure::Malformed),
            "{} without its terminal event",
            case.name
        );
        // Inside the terminal event.
        let inside = &case.body.as_bytes()[..end + 8];
        let got = observe(case.shape, true, inside, 3, 1 << 20);
        assert_eq!(
            got.failure,
            Some(Failure::Malformed),
            "{} cut inside its terminal event",
            case.name
        );
        // The same cut, reported as a transport error.
        let mut observer = Observer::new(case.shape, true, 1 << 20);
        observer.feed(cut);
        let got = observer.finish(200, false);
        assert_eq!(got.failure, Some(Failure::Transport), "{}", case.name);
        assert!(
            case.text.starts_with(&got.text),
            "{} keeps the text read",
            case.name
        );
    }
}

#[test]
fn chat_stream_needs_done_and_a_finish_reason() {
    let without_reason =
        CHAT_STREAM_TEXT.replace(r#""finish_reason":"stop""#, r#""finish_reason":null"#);
    let got = observe(
        ApiShape::ChatCompletions,
        true,
        without_reason.as_bytes(),
        10,
        1 << 20,
    );
    assert_eq!(got.failure, Some(Failure::Malformed));
    assert_eq!(got.text, "Hello! Comment ça va?\n\"Bien\"");
}

#[test]
fn reads_choice_zero_only() {
    let stream = r#"data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":1,"delta":{"role":"assistant","content":"other"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"mine"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":1,"delta":{},"logprobs":null,"finish_reason":"length"},{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: [DONE]

"#;
    let got = observe(
        ApiShape::ChatCompletions,
        true,
        stream.as_bytes(),
        13,
        1 << 20,
    );
    assert_eq!(got.text, "mine");
    assert_eq!(got.finish_reason, Some(FinishReason::Stop));
    assert_eq!(got.failure, None);
}

#[test]
fn oversized_event_is_truncation_not_malformed() {
    let huge = "x".repeat(300 * 1024);
    let stream = RESPONSES_STREAM_TEXT.replace(
            r#""status":"completed","error":null,"incomplete_details":null,"instructions":"You are a helpful assistant.""#,
            &format!(r#""status":"completed","error":null,"incomplete_details":null,"instructions":"{huge}""#),
        );
    assert!(
        stream.len() > huge.len(),
        "the fixture holds the huge event"
    );
    let got = observe(ApiShape::Responses, true, stream.as_bytes(), 4096, 1000);
    assert_eq!(got.text, "Hi there! How can I assist you today?");
    assert!(got.truncated);
    assert_eq!(got.failure, None);
    assert_eq!(got.finish_reason, None);
    // With a larger bound the same event fits.
    let got = observe(
        ApiShape::Responses,
        true,
        stream.as_bytes(),
        4096,
        200 * 1024,
    );
    assert!(!got.truncated);
    assert_eq!(got.finish_reason, Some(FinishReason::Stop));
}

#[test]
fn broken_or_error_events_are_malformed() {
    use ApiShape::*;
    let broken = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"\n\n";
    let cases: &[(&str, ApiShape, String)] = &[
            ("chat broken json", ChatCompletions, format!("{broken}{CHAT_STREAM_TEXT}")),
            ("completions broken json", Completions, format!("{broken}{COMPLETIONS_STREAM}")),
            (
                "chat error object",
                ChatCompletions,
                format!("data: {{\"error\":{{\"message\":\"The server had an error\",\"type\":\"server_error\"}}}}\n\n{CHAT_STREAM_TEXT}"),
            ),
            (
                "messages error event",
                Messages,
                MESSAGES_STREAM_TEXT.replace(
                    "event: message_delta",
                    "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\nevent: message_delta",
                ),
            ),
            (
                "messages broken json",
                Messages,
                MESSAGES_STREAM_TEXT.replace("data: {\"type\": \"ping\"}", "data: {\"type\": \"ping\""),
            ),
            (
                "messages unnamed broken json",
                Messages,
                format!("data: not json\n\n{MESSAGES_STREAM_TEXT}"),
            ),
            (
                "responses failed",
                Responses,
                RESPONSES_STREAM_TEXT.replace(
                    "event: response.completed",
                    "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"boom\"}}}\n\nevent: response.completed",
                ),
            ),
            (
                "responses error",
                Responses,
                format!("event: error\ndata: {{\"type\":\"error\",\"code\":\"ERR_SOMETHING\",\"message\":\"Something went wrong\",\"param\":null,\"sequence_number\":1}}\n\n{RESPONSES_STREAM_TEXT}"),
            ),
            (
                "responses broken json",
                Responses,
                RESPONSES_STREAM_TEXT.replace("\"sequence_number\":7,", "\"sequence_number\":7,,"),
            ),
        ];
    for (name, shape, body) in cases {
        for piece in [1, 9, body.len()] {
            let got = observe(*shape, true, body.as_bytes(), piece, 1 << 20);
            assert_eq!(got.failure, Some(Failure::Malformed), "{name}");
        }
    }
}

#[test]
fn unnamed_events_are_read_by_their_type() {
    for case in cases()
        .into_iter()
        .filter(|c| c.streaming && c.shape == ApiShape::Messages)
    {
        let unnamed: String = case
            .body
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let named = observe(case.shape, true, case.body.as_bytes(), 4, 1 << 20);
        assert_eq!(
            observe(case.shape, true, unnamed.as_bytes(), 4, 1 << 20),
            named,
            "{}",
            case.name
        );
    }
}

#[test]
fn invalid_bodies_are_malformed() {
    use ApiShape::*;
    let cases: &[(ApiShape, &str)] = &[
            (ChatCompletions, ""),
            (ChatCompletions, "{\"choices\":[{\"index\":0,\"message\":{\"content\":\"hi\"}"),
            (ChatCompletions, "<html>Bad gateway</html>"),
            (ChatCompletions, "{\"error\":{\"message\":\"oops\"}}"),
            (Completions, "{\"choices\":[{\"text\":3}]}"),
            (Responses, "{\"output\":[]}"),
            (Messages, "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"),
            (Responses, r#"{"status":"failed","output":[],"error":{"code":"server_error"}}"#),
        ];
    for (shape, body) in cases {
        let got = observe(*shape, false, body.as_bytes(), 4, 1 << 20);
        assert_eq!(got.failure, Some(Failure::Malformed), "{shape:?} {body:?}");
        assert!(!got.truncated);
    }
}

#[test]
fn usage_only_reads_the_same_usage_and_failures() {
    use ApiShape::*;
    let usage_only = |shape, body: &str| {
        let mut observer = Observer::usage_only(shape, false, 1 << 20);
        observer.feed(body.as_bytes());
        observer.finish(200, true)
    };
    let mut with_reason = 0;
    for case in cases().into_iter().filter(|c| !c.streaming) {
        let got = usage_only(case.shape, case.body);
        let full = observe(case.shape, false, case.body.as_bytes(), 4, 1 << 20);
        assert_eq!(got.failure, None, "{}", case.name);
        assert_eq!(got.usage, case.usage, "{}", case.name);
        // The finish reason is part of the outcome (the request's span reports it).
        assert_eq!(got.finish_reason, full.finish_reason, "{}", case.name);
        with_reason += usize::from(got.finish_reason.is_some());
        assert_eq!(
            (got.text.as_str(), got.tool_calls.len()),
            ("", 0),
            "{}",
            case.name
        );
    }
    assert!(with_reason >= 3, "the cases carry finish reasons");
    let invalid: &[(ApiShape, &str)] = &[
        (ChatCompletions, ""),
        (
            ChatCompletions,
            "{\"choices\":[{\"index\":0,\"message\":{\"content\":\"hi\"}",
        ),
        (ChatCompletions, "<html>Bad gateway</html>"),
        (ChatCompletions, "{\"error\":{\"message\":\"oops\"}}"),
        (Responses, "{\"output\":[]}"),
        (
            Messages,
            "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}",
        ),
        (
            Responses,
            r#"{"status":"failed","output":[],"error":{"code":"server_error"}}"#,
        ),
    ];
    for (shape, body) in invalid {
        let got = usage_only(*shape, body);
        assert_eq!(got.failure, Some(Failure::Malformed), "{shape:?} {body:?}");
    }
    // Nothing inside `choices` is read: a wrong type there goes unnoticed.
    let odd = usage_only(Completions, "{\"choices\":[{\"text\":3}]}");
    assert_eq!(odd.failure, None);
}

#[test]
fn finish_reasons_are_normalised() {
    use ApiShape::*;
    use FinishReason::*;
    let chat = |reason: &str| {
        format!(
            r#"{{"choices":[{{"index":0,"message":{{"content":"x"}},"finish_reason":"{reason}"}}]}}"#
        )
    };
    let messages = |reason: &str| format!(r#"{{"content":[],"stop_reason":"{reason}"}}"#);
    let responses = |status: &str, details: &str| {
        format!(r#"{{"status":"{status}","incomplete_details":{details},"output":[]}}"#)
    };
    let cases: Vec<(ApiShape, String, FinishReason)> = vec![
        (ChatCompletions, chat("stop"), Stop),
        (ChatCompletions, chat("length"), Length),
        (ChatCompletions, chat("tool_calls"), ToolCalls),
        (ChatCompletions, chat("function_call"), ToolCalls),
        (ChatCompletions, chat("content_filter"), ContentFilter),
        (Completions, chat("eos"), Other("eos".to_owned())),
        (Messages, messages("end_turn"), Stop),
        (Messages, messages("stop_sequence"), Stop),
        (Messages, messages("max_tokens"), Length),
        (Messages, messages("tool_use"), ToolCalls),
        (Messages, messages("refusal"), ContentFilter),
        (
            Messages,
            messages("pause_turn"),
            Other("pause_turn".to_owned()),
        ),
        (Responses, responses("completed", "null"), Stop),
        (
            Responses,
            responses("incomplete", r#"{"reason":"max_output_tokens"}"#),
            Length,
        ),
        (
            Responses,
            responses("incomplete", r#"{"reason":"content_filter"}"#),
            ContentFilter,
        ),
        (
            Responses,
            responses("incomplete", r#"{"reason":"other"}"#),
            Other("other".to_owned()),
        ),
        (
            Responses,
            responses("cancelled", "null"),
            Other("cancelled".to_owned()),
        ),
    ];
    for (shape, body, expected) in cases {
        let got = observe(shape, false, body.as_bytes(), body.len(), 1 << 20);
        assert_eq!(got.failure, None, "{body}");
        assert_eq!(got.finish_reason, Some(expected), "{body}");
    }
}

#[test]
fn error_status_is_a_failure() {
    let body = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    for (status, streaming, complete) in [
        (429, false, true),
        (500, true, true),
        (503, false, false),
        (400, true, false),
    ] {
        let mut observer = Observer::new(ApiShape::ChatCompletions, streaming, 1 << 20);
        observer.feed(body);
        let got = observer.finish(status, complete);
        assert_eq!(got.failure, Some(Failure::Status(status)));
        assert_eq!(got.status, status);
        assert!(got.is_empty());
    }
}

#[test]
fn cut_body_is_a_transport_failure() {
    let body = CHAT_BODY_TEXT.as_bytes();
    let mut observer = Observer::new(ApiShape::ChatCompletions, false, 1 << 20);
    observer.feed(&body[..body.len() / 2]);
    let got = observer.finish(200, false);
    assert_eq!(got.failure, Some(Failure::Transport));
    assert_eq!(got.text, "");
}

#[test]
fn stream_text_stays_within_the_bound() {
    let chunk = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789 héllo \"},\"finish_reason\":null}]}\n\n";
    let last = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
    let max = 1001;
    let mut observer = Observer::new(ApiShape::ChatCompletions, true, max);
    let mut fed = 0;
    while fed < 10 << 20 {
        observer.feed(chunk.as_bytes());
        fed += chunk.len();
    }
    observer.feed(last.as_bytes());
    let got = observer.finish(200, true);
    assert!(
        got.text.len() <= max && got.text.len() > max - 4,
        "{}",
        got.text.len()
    );
    assert!(got.text.starts_with("0123456789 héllo 0123"));
    assert!(got.truncated);
    assert_eq!(got.failure, None);
    assert_eq!(got.finish_reason, Some(FinishReason::Length));
    assert_eq!(got.usage, usage(3, 4));
}

#[test]
fn tool_arguments_and_calls_stay_within_the_bound() {
    let start = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"write\",\"input\":{}}}\n\n";
    let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"aaaaaaaaaaaaaaaa\"}}\n\n";
    let mut observer = Observer::new(ApiShape::Messages, true, 500);
    observer.feed(start.as_bytes());
    for _ in 0..100_000 {
        observer.feed(delta.as_bytes());
    }
    let got = observer.finish(200, true);
    assert_eq!(got.tool_calls.len(), 1);
    assert_eq!(got.tool_calls[0].name, "write");
    assert!(got.tool_calls[0].arguments.len() + "write".len() + TOOL_CALL_COST <= 500);
    assert!(got.tool_calls[0].arguments.len() > 400);
    assert!(got.truncated);
    // Without message_stop the stream is still not whole.
    assert_eq!(got.failure, Some(Failure::Malformed));

    // A flood of empty tool calls is bounded too.
    let mut observer = Observer::new(ApiShape::ChatCompletions, true, 1000);
    for i in 0..100_000 {
        let chunk = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":{i}}}]}}}}]}}\n\n");
        observer.feed(chunk.as_bytes());
    }
    let got = observer.finish(200, true);
    assert!(got.tool_calls.len() * TOOL_CALL_COST <= 1000);
    assert!(got.truncated);
}

#[test]
fn body_stays_within_the_bound() {
    let text = "x".repeat(10 << 20);
    let body = format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}]}}"#
    );
    for max in [0, 1000, 1 << 20] {
        let got = observe(
            ApiShape::ChatCompletions,
            false,
            body.as_bytes(),
            64 * 1024,
            max,
        );
        assert!(got.text.len() <= max);
        assert!(got.truncated);
        assert_eq!(got.failure, None);
    }
    // A body that fits, whose text does not.
    let got = observe(
        ApiShape::Completions,
        false,
        COMPLETIONS_BODY.as_bytes(),
        7,
        COMPLETIONS_BODY.len(),
    );
    assert_eq!(got.failure, None);
    assert!(!got.truncated);
}

#[test]
fn text_is_cut_on_a_character_boundary() {
    // "Hello, world " is 13 bytes, then "—" takes 3.
    let cases = [
        (13, "Hello, world "),
        (14, "Hello, world "),
        (15, "Hello, world "),
        (16, "Hello, world —"),
        (0, ""),
    ];
    for (max, text) in cases {
        let got = observe(
            ApiShape::Messages,
            true,
            MESSAGES_STREAM_TEXT.as_bytes(),
            11,
            max,
        );
        assert_eq!(got.text, text, "{max}");
        assert!(got.truncated);
        assert_eq!(got.failure, None);
    }
}

#[test]
fn garbage_never_panics() {
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const MUTATIONS: &[u8] = b"{}[]\":,\n\\x0 \xff";
    let fixtures: Vec<Case> = cases();
    for round in 0..400 {
        let case = &fixtures[round % fixtures.len()];
        let mut bytes = case.body.as_bytes().to_vec();
        if round.is_multiple_of(5) {
            let len = (next() % 2000) as usize;
            bytes = (0..len).map(|_| next() as u8).collect();
        } else {
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % bytes.len().max(1);
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = MUTATIONS[(next() % MUTATIONS.len() as u64) as usize];
                }
            }
        }
        for streaming in [true, false] {
            let max = (next() % 300) as usize;
            let piece = (next() % 50) as usize + 1;
            let got = observe(case.shape, streaming, &bytes, piece, max);
            let total: usize = got.text.len()
                + got
                    .tool_calls
                    .iter()
                    .map(|c| c.name.len() + c.arguments.len())
                    .sum::<usize>();
            assert!(total <= max);
            assert_eq!(
                got,
                observe(case.shape, streaming, &bytes, bytes.len(), max)
            );
        }
    }
}

#[test]
fn shapes_from_paths() {
    let cases = [
        ("/v1/chat/completions", Some(ApiShape::ChatCompletions)),
        ("/v1/chat/completions/", Some(ApiShape::ChatCompletions)),
        ("/v1/completions", Some(ApiShape::Completions)),
        ("/v1/responses", Some(ApiShape::Responses)),
        ("/v1/responses/", Some(ApiShape::Responses)),
        ("/v1/messages", Some(ApiShape::Messages)),
        ("/v1/messages//", None),
        ("/v1/messages/count_tokens", None),
        ("/v1/models", None),
        ("/chat/completions", None),
        ("", None),
        ("/", None),
    ];
    for (path, expected) in cases {
        assert_eq!(ApiShape::from_path(path), expected, "{path}");
    }
    let labels: Vec<&str> = [
        ApiShape::ChatCompletions,
        ApiShape::Completions,
        ApiShape::Responses,
        ApiShape::Messages,
    ]
    .into_iter()
    .map(ApiShape::as_str)
    .collect();
    assert_eq!(labels, ["chat", "completions", "responses", "messages"]);
}

#[test]
fn failed_and_empty_observations() {
    let got = Observation::failed(Failure::Timeout);
    assert_eq!(got.failure, Some(Failure::Timeout));
    assert_eq!(got.status, 0);
    assert!(got.is_empty());
    assert_eq!(Observation::failed(Failure::Status(502)).status, 502);
    let mut obs = Observation {
        text: " \n\t".to_owned(),
        ..Observation::default()
    };
    assert!(obs.is_empty());
    obs.tool_calls.push(call("f", "{}"));
    assert!(!obs.is_empty());
    obs.tool_calls.clear();
    obs.text.push('x');
    assert!(!obs.is_empty());
}

/// Observes a stream for its outcome only, fed in pieces of `piece` bytes.
fn observe_outcome(shape: ApiShape, body: &[u8], piece: usize) -> Observation {
    let mut observer = Observer::usage_only(shape, true, 1 << 20);
    for chunk in body.chunks(piece.max(1)) {
        observer.feed(chunk);
    }
    observer.finish(200, true)
}

#[test]
fn usage_only_streams_read_the_same_outcome() {
    for case in cases().into_iter().filter(|c| c.streaming) {
        let body = case.body.as_bytes();
        let full = observe(case.shape, true, body, body.len(), 1 << 20);
        for piece in [1, 7, 64, body.len()] {
            let got = observe_outcome(case.shape, body, piece);
            assert_eq!(got.failure, None, "{} in pieces of {piece}", case.name);
            assert_eq!(got.usage, full.usage, "{} in pieces of {piece}", case.name);
            assert_eq!(got.finish_reason, full.finish_reason, "{}", case.name);
            assert_eq!((got.text.as_str(), got.tool_calls.len()), ("", 0));
        }
        // Cut short, or inside its terminal event: malformed, as when read whole.
        let end = terminal(case.body);
        for cut in [end, end + 8] {
            let got = observe_outcome(case.shape, &body[..cut], 3);
            assert_eq!(got.failure, Some(Failure::Malformed), "{} cut", case.name);
        }
    }
    let without_reason =
        CHAT_STREAM_TEXT.replace(r#""finish_reason":"stop""#, r#""finish_reason":null"#);
    let got = observe_outcome(ApiShape::ChatCompletions, without_reason.as_bytes(), 10);
    assert_eq!(got.failure, Some(Failure::Malformed));
}

#[test]
fn usage_only_streams_see_error_and_broken_events() {
    use ApiShape::*;
    let cases: &[(&str, ApiShape, String)] = &[
        (
            "chat event cut",
            ChatCompletions,
            format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"\n\n{CHAT_STREAM_TEXT}"),
        ),
        (
            "chat html",
            ChatCompletions,
            format!("data: <html><body>502 Bad Gateway</body></html>\n\n{CHAT_STREAM_TEXT}"),
        ),
        (
            "messages error event",
            Messages,
            MESSAGES_STREAM_TEXT.replace(
                "event: message_delta",
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\nevent: message_delta",
            ),
        ),
        (
            "messages event cut",
            Messages,
            MESSAGES_STREAM_TEXT.replace("data: {\"type\": \"ping\"}", "data: {\"type\": \"ping\""),
        ),
        (
            "responses failed",
            Responses,
            RESPONSES_STREAM_TEXT.replace(
                "event: response.completed",
                "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\"}}\n\nevent: response.completed",
            ),
        ),
        (
            "responses error",
            Responses,
            format!("event: error\ndata: {{\"type\":\"error\",\"code\":\"E\"}}\n\n{RESPONSES_STREAM_TEXT}"),
        ),
    ];
    for (name, shape, body) in cases {
        for piece in [1, 9, body.len()] {
            let got = observe_outcome(*shape, body.as_bytes(), piece);
            assert_eq!(got.failure, Some(Failure::Malformed), "{name}");
        }
    }
    // A syntax error inside an event that carries nothing the outcome needs is not looked for:
    // finding it costs as much as reading the event.
    let inner = RESPONSES_STREAM_TEXT.replace("\"sequence_number\":7,", "\"sequence_number\":7,,");
    assert_eq!(
        observe_outcome(Responses, inner.as_bytes(), 9).failure,
        None
    );
}
