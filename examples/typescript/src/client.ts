// One Apollo Client for the examples: queries and mutations over HTTP, subscriptions over
// WebSockets (graphql-transport-ws) or over plain HTTP (Apollo's multipart protocol, for
// networks whose proxies block WebSockets).
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache } from "@apollo/client";
import { GraphQLWsLink } from "@apollo/client/link/subscriptions";
import { relayStylePagination } from "@apollo/client/utilities";
import { getMainDefinition } from "@apollo/client/utilities";
import { createClient, type Client } from "graphql-ws";
import WebSocket from "ws";

export type Transport = "ws" | "http";

export interface Connection {
  client: ApolloClient;
  close: () => Promise<void>;
}

export function settings(): { url: string; token: string } {
  const url = process.env.CREWGRAPH_URL ?? "http://127.0.0.1:8000";
  const token = process.env.CREWGRAPH_TOKEN;
  if (!token) {
    throw new Error("set CREWGRAPH_TOKEN to an access token (the login mutation returns one)");
  }
  return { url: url.replace(/\/+$/, ""), token };
}

export function connect(transport: Transport = "ws"): Connection {
  const { url, token } = settings();
  const http = new HttpLink({
    uri: `${url}/graphql`,
    headers: { authorization: `Bearer ${token}` },
  });
  let ws: Client | undefined;
  let link: ApolloLink = http;
  if (transport === "ws") {
    ws = createClient({
      url: `${url.replace(/^http/, "ws")}/graphql`,
      webSocketImpl: WebSocket,
      // The server authenticates the socket once, from connection_init.
      connectionParams: { authorization: `Bearer ${token}` },
      lazy: true,
      retryAttempts: 0,
    });
    const subscriptions = new GraphQLWsLink(ws);
    link = ApolloLink.split(
      ({ query }) => {
        const definition = getMainDefinition(query);
        return (
          definition.kind === "OperationDefinition" && definition.operation === "subscription"
        );
      },
      subscriptions,
      http,
    );
  }
  const client = new ApolloClient({
    link,
    cache: new InMemoryCache({
      typePolicies: {
        // Pages of `flows` fetched with `after` merge into one list in the cache.
        Query: { fields: { flows: relayStylePagination() } },
      },
    }),
  });
  return {
    client,
    close: async () => {
      client.stop();
      await ws?.dispose();
    },
  };
}

/** The `extensions.code` of each GraphQL error in `error`, if any. */
export function errorCodes(error: unknown): string[] {
  const errors = (error as { errors?: { extensions?: { code?: unknown } }[] } | undefined)?.errors;
  if (!Array.isArray(errors)) {
    return [];
  }
  return errors.map((e) => String(e.extensions?.code ?? "UNKNOWN"));
}
