# The offline Zipkin image: Zipkin's server jar (Maven Central, io.zipkin:zipkin-server:<version>:jar:exec) on the
# Kafka image's JRE. Where images can be pulled, openzipkin/zipkin serves instead (compose.yaml's default).
# Built by infra/setup.sh, whose build context holds the jar as zipkin.jar.
ARG BASE
FROM ${BASE}
COPY zipkin.jar /opt/zipkin/zipkin.jar
EXPOSE 9411
CMD ["java", "-Xmx256m", "-jar", "/opt/zipkin/zipkin.jar"]
