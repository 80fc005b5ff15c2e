// graphql-ws (the client library), vendored same-origin by the frontend/ package's copy step.
export { createClient } from "/static/vendor/graphql-ws/client.js";
