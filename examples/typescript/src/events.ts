// Run a flow (or follow a run) and print its events as JSON lines until the run ends.
//
//   node dist/events.js ws|http <executionId> [afterSequence]
//   node dist/events.js ws|http --run <flowId> '<inputs JSON>'
//
// `afterSequence` resumes a stream: the server replays the stored events after it, then
// continues live, with no gap and no duplicate. Over `http` the subscription is one
// streaming POST (multipart/mixed), no WebSocket involved.
import { connect, errorCodes, type Transport } from "./client.js";
import {
  ExampleExecuteFlowDocument,
  ExampleExecutionDocument,
  ExampleExecutionEventsDocument,
} from "./generated/graphql.js";

async function main(): Promise<number> {
  const [transport, first, second, third] = process.argv.slice(2);
  if ((transport !== "ws" && transport !== "http") || !first) {
    console.error("usage: events.js ws|http <executionId> [afterSequence] | --run <flowId> <inputs>");
    return 64;
  }
  const { client, close } = connect(transport as Transport);
  try {
    let executionId = first;
    let afterSequence = second ? Number(second) : 0;
    if (first === "--run") {
      const started = await client.mutate({
        mutation: ExampleExecuteFlowDocument,
        variables: { id: second ?? "", inputs: JSON.parse(third ?? "{}") as unknown },
      });
      executionId = started.data?.executeFlow.id ?? "";
      afterSequence = 0;
      console.log(JSON.stringify({ started: executionId }));
    }
    const failed = await new Promise<string[] | null>((resolve) => {
      client
        .subscribe({ query: ExampleExecutionEventsDocument, variables: { executionId, afterSequence } })
        .subscribe({
          next: (result) => {
            if (result.error) {
              resolve(errorCodes(result.error));
              return;
            }
            const event = result.data?.executionEvents;
            if (event) {
              console.log(JSON.stringify({ event }));
            }
          },
          error: (error: unknown) => resolve(errorCodes(error).length ? errorCodes(error) : ["NETWORK"]),
          complete: () => resolve(null),
        });
    });
    if (failed) {
      console.log(JSON.stringify({ errors: failed }));
      return 2;
    }
    const done = await client.query({
      query: ExampleExecutionDocument,
      variables: { id: executionId },
      fetchPolicy: "network-only",
    });
    console.log(JSON.stringify({ execution: done.data?.execution }));
    return 0;
  } finally {
    await close();
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
