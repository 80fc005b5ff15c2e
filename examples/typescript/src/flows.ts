// A Relay connection in Apollo's cache: page through the team's flows two at a time;
// `relayStylePagination` merges the pages, so the cached query holds them all.
import { connect } from "./client.js";
import { ExampleFlowsDocument, type ExampleFlowsQuery } from "./generated/graphql.js";

const PAGE = 2;

async function main(): Promise<void> {
  const { client, close } = connect("http");
  try {
    let after: string | null = null;
    let pages = 0;
    for (;;) {
      const result: { data?: ExampleFlowsQuery | undefined } = await client.query({
        query: ExampleFlowsDocument,
        variables: { first: PAGE, after },
        fetchPolicy: "network-only",
      });
      const page = result.data?.flows;
      if (!page) {
        throw new Error("no data");
      }
      pages += 1;
      if (!page.pageInfo.hasNextPage || !page.pageInfo.endCursor) {
        break;
      }
      after = page.pageInfo.endCursor;
    }
    // Read back from the cache alone: every page, in order, under one field.
    const cached = client.readQuery({ query: ExampleFlowsDocument, variables: { first: PAGE } });
    const names = cached?.flows.edges.map((edge) => edge.node.name) ?? [];
    console.log(JSON.stringify({ pages, cached: names }));
  } finally {
    await close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
